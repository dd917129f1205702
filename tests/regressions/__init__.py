"""Regression tests named after the threat or bug they pin (found by tests/adversarial)."""
