"""Adversarial suite: seeded mutation corpus, target table, bounded mutation run, atheris fuzzing.

See docs/security.md for what is covered and how to run each part.
"""
