"""``augment``: what augmentation costs per patch, next to decoding, before and after.

*before* is the pre-vectorisation augmentation (normalise, then exact RGB->HSV->RGB colour
jitter and a per-patch rotation loop: :mod:`patchray.benchmarks.reference`); *after* is
:func:`patchray.data.transforms.augment` on the decoded uint8 batch, as
``prepare_training_batch`` calls it. Both get the same random draws, so the table also
shows how far the fast hue rotation lands from the exact HSV round trip.

    python -m patchray.benchmarks augment --out runs/bench [--size 50 --size 96] [--quick]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions, Log, bar_chart, finish, format_table, interleaved_rates, sample_patches, say,
    single_thread,
)
from patchray.benchmarks.reference import apply_augment_hsv
from patchray.data.records import encode_png
from patchray.data.transforms import apply_augment, decode_patches, draw_augment_params, normalise

NAME = "augment"
BATCH = 256


def measure_augment(size: int, *, n: int = BATCH, rounds: int = 5,
                    min_seconds: float = 0.5) -> dict[str, Any]:
    """Patches/s per core of PNG decode, augment before and after, at ``size``."""
    pixels = sample_patches(size, n)
    pngs = [encode_png(p) for p in pixels]
    params = draw_augment_params(n, np.random.default_rng(0))
    fast, exact = apply_augment(pixels, params), apply_augment_hsv(normalise(pixels), params)
    variants = {
        "decode png": lambda: normalise(decode_patches(pngs, size)),
        "augment before": lambda: apply_augment_hsv(normalise(pixels), params),
        "augment after": lambda: apply_augment(pixels, params),
    }
    with single_thread():
        rates = interleaved_rates(variants, n, rounds=rounds, min_seconds=min_seconds)
    best = {k: v["best"] for k, v in rates.items()}
    decode = best["decode png"]
    return {
        "size": size,
        "rates": rates,
        "decode_per_s": decode,
        "before_per_s": best["augment before"],
        "after_per_s": best["augment after"],
        "speedup": best["augment after"] / best["augment before"],
        # Time of augmenting a patch over time of decoding it.
        "before_cost_vs_decode": decode / best["augment before"],
        "after_cost_vs_decode": decode / best["augment after"],
        # Share of a train patch's CPU time (decode + augment) that augmentation takes.
        "before_share": decode / (decode + best["augment before"]),
        "after_share": decode / (decode + best["augment after"]),
        "vs_exact_hsv_mean_abs": float(np.abs(fast - exact).mean()),
        "vs_exact_hsv_max_abs": float(np.abs(fast - exact).max()),
    }


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    rounds, min_seconds = (3, 0.3) if opts.quick else (7, 1.0)
    rows = []
    for size in opts.sizes:
        log(f"augment {size}x{size}: {rounds} interleaved rounds of {BATCH} patches")
        rows.append(measure_augment(size, rounds=rounds, min_seconds=min_seconds))
    columns = ["size", "decode_per_s", "before_per_s", "after_per_s", "speedup",
               "before_cost_vs_decode", "after_cost_vs_decode", "vs_exact_hsv_mean_abs"]
    print(format_table(rows, columns), flush=True)
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{r['size']}x{r['size']}": {k: v["best"] for k, v in r["rates"].items()} for r in rows},
        title="Patches/s per core: PNG decode vs augmentation before/after", ylabel="patches/s",
        log_scale=True,
    )
    return finish(opts, NAME, rows, chart, log)
