"""Side-by-side timing: variants run in turn, round after round, so all of them see the same
machine load (machines here are shared; only ratios from one run are figures to quote).
Used by the benchmarks and by export, which times each precision of a model."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np


def interleaved_rates(
    variants: dict[str, Callable[[], Any]], items: int, *, rounds: int, min_seconds: float
) -> dict[str, dict[str, float]]:
    """Items/s of each variant, run in turn every round so all of them see the same load.

    Each round calls a variant until ``min_seconds`` have passed (at least once). ``best``
    is the least disturbed round (the machine's capability), ``median`` the typical one.
    """
    seen: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, fn in variants.items():
            calls, t0 = 0, time.perf_counter()
            while True:
                fn()
                calls += 1
                elapsed = time.perf_counter() - t0
                if elapsed >= min_seconds:
                    break
            seen[name].append(items * calls / elapsed)
    return {
        name: {"best": float(max(r)), "median": float(np.median(r)), "rounds": len(r)}
        for name, r in seen.items()
    }
