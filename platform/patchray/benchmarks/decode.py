"""``decode``: decoded patches/s per core for each storage layout of the ``image`` column.

Layouts: ``png`` (the dataset today), ``raw`` (the HxWx3 uint8 bytes, decoded by
``np.frombuffer``: a decode-once cache), ``raw-zstd`` (raw bytes in a zstd-compressed Parquet
page: the decompression a reader pays), each alone (decode + normalise, as val/test get it)
and with augmentation (as train gets it). One process, one thread; the variants are
interleaved so the ratios share the machine's load. The table also says how many such cores
one GPU needs (``--gpu-images-per-s``, default an H200 on CNN-6L at 96x96).

    python -m patchray.benchmarks decode --out runs/bench [--size 50 --size 96] [--quick]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions, Log, bar_chart, format_table, interleaved_rates, machine, sample_patches, say,
    single_thread, write_results,
)
from patchray.data.records import encode_png
from patchray.data.transforms import augment, decode_patches, normalise

NAME = "decode"
BATCH = 256  # the map_batches batch size of patchray.data.pipeline


def layout_variants(pixels: np.ndarray) -> tuple[dict[str, Any], dict[str, float]]:
    """The timed callables for one batch of patches, and each layout's bytes per patch."""
    import pyarrow as pa

    n, size = len(pixels), pixels.shape[1]
    pngs = [encode_png(p) for p in pixels]
    raws = [np.ascontiguousarray(p).tobytes() for p in pixels]
    zstd = pa.Codec("zstd")
    joined = b"".join(raws)
    packed = zstd.compress(joined)
    rng = np.random.default_rng(0)

    def from_zstd() -> np.ndarray:
        data = zstd.decompress(packed, decompressed_size=len(joined)).to_pybytes()
        cut = size * size * 3
        return decode_patches([data[i * cut:(i + 1) * cut] for i in range(n)], size,
                              encoding="raw")

    variants = {
        "png": lambda: normalise(decode_patches(pngs, size)),
        "raw": lambda: normalise(decode_patches(raws, size, encoding="raw")),
        "raw-zstd": lambda: normalise(from_zstd()),
        "png+augment": lambda: augment(decode_patches(pngs, size), rng),
        "raw+augment": lambda: augment(decode_patches(raws, size, encoding="raw"), rng),
    }
    stored = {
        "png": float(np.mean([len(b) for b in pngs])),
        "raw": float(size * size * 3),
        "raw-zstd": len(packed) / n,
    }
    return variants, stored


def measure_decode(size: int, *, n: int = BATCH, rounds: int = 5, min_seconds: float = 0.5,
                   gpu_images_per_s: float = 31_000.0) -> list[dict[str, Any]]:
    """One row per layout at ``size``: patches/s per core, ratio to PNG, cores per GPU."""
    variants, stored = layout_variants(sample_patches(size, n))
    # Check before timing: every layout must give the pixels PNG gives.
    reference = variants["png"]()
    for name in ("raw", "raw-zstd"):
        np.testing.assert_array_equal(variants[name](), reference)
    with single_thread():
        rates = interleaved_rates(variants, n, rounds=rounds, min_seconds=min_seconds)
    png = rates["png"]["best"]
    rows = []
    for name, r in rates.items():
        rows.append({
            "size": size,
            "layout": name,
            "patches_per_s_core": r["best"],
            "median_patches_per_s_core": r["median"],
            "vs_png": r["best"] / png,
            "cores_per_gpu": gpu_images_per_s / r["best"],
            "bytes_per_patch": stored.get(name.split("+")[0], float("nan")),
        })
    return rows


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    rounds, min_seconds = (3, 0.3) if opts.quick else (7, 1.0)
    rows: list[dict[str, Any]] = []
    for size in opts.sizes:
        log(f"decode {size}x{size}: {rounds} interleaved rounds of {BATCH} patches per layout")
        rows += measure_decode(size, rounds=rounds, min_seconds=min_seconds,
                               gpu_images_per_s=opts.gpu_images_per_s)
    columns = ["size", "layout", "patches_per_s_core", "median_patches_per_s_core", "vs_png",
               "cores_per_gpu", "bytes_per_patch"]
    print(format_table(rows, columns), flush=True)
    log(f"cores_per_gpu = {opts.gpu_images_per_s:,.0f} images/s / patches_per_s_core")
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{s}x{s}": {r["layout"]: r["patches_per_s_core"] for r in rows if r["size"] == s}
         for s in opts.sizes},
        title="Decoded patches/s per core (1 process, 1 thread)", ylabel="patches/s",
        log_scale=True,
    )
    payload = {"benchmark": NAME, "quick": opts.quick, "machine": machine(),
               "gpu_images_per_s": opts.gpu_images_per_s, "rows": rows,
               "chart": chart.name}
    path = write_results(opts.out, NAME, payload)
    log(f"wrote {path} and {chart}")
    return payload
