"""Benchmarks: ``python -m bench [NAME...]`` runs ``bench/bench_<NAME>.py`` modules.

Each module exposes ``run() -> list[dict[str, object]]``; every row names a measurement, its
median time, the baseline measured in the same run, their ratio and the target ratio where an
issue sets one. Ratios, not absolute times, are what we compare: these machines are shared.
"""
