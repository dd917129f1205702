"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(fn: Callable[[], object], *, repeat: int = 50, warmup: int = 3) -> float:
    """Median wall time of ``fn()`` over ``repeat`` runs after ``warmup`` untimed runs."""
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def row(
    name: str,
    seconds: float,
    *,
    baseline_name: str | None = None,
    baseline_seconds: float | None = None,
    target_ratio: float | None = None,
    **extra: object,
) -> dict[str, object]:
    """One result row; ``ratio`` = seconds / baseline_seconds when a baseline is given."""
    out: dict[str, object] = {"name": name, "median_ms": round(seconds * 1e3, 4)}
    if baseline_seconds:
        ratio = seconds / baseline_seconds
        out |= {
            "baseline": baseline_name,
            "baseline_ms": round(baseline_seconds * 1e3, 4),
            "ratio": round(ratio, 3),
        }
        if target_ratio is not None:
            out |= {"target_ratio": target_ratio, "meets_target": ratio <= target_ratio}
    out.update(extra)
    return out
