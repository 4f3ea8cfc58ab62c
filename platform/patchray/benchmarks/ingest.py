"""``ingest``: ``patchray ingest idc`` throughput against just copying the source bytes.

Source: an IDC-layout tree (``<patient>/<label>/<patient>_idx5_x<X>_y<Y>_class<L>.png``) of
synthetic patches, made once. Variants, interleaved round by round in one process:

* *copy*: read every source file and write the same bytes to one output file -- the floor
  any ingest pays (file system walk, reads, writes);
* *patchray ingest*: the real ingest (path parsing, patient split, decode, RGB checks,
  SHA-256 of pixels, lossless PNG re-encode, Parquet with page checksums, manifest), in one
  process, and with ``--workers`` = one process per core.

Ratio = ingest patches/s / copy patches/s: what patchray's guarantees cost; speed-up =
parallel / one-process ingest.

    python -m patchray.benchmarks ingest --out runs/bench [--size 50] [--quick]
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from patchray.benchmarks.common import (
    BenchOptions, Log, bar_chart, finish, format_table, interleaved_rates, say, single_thread,
)

NAME = "ingest"


def make_idc_tree(root: Path, size: int, *, patients: int, per_patient: int) -> int:
    """Write synthetic patches in the IDC layout (once); return how many files it holds."""
    from patchray.data.records import encode_png
    from patchray.data.synthetic import generate_patches

    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        for p in generate_patches(patients, per_patient, size=size, seed=3):
            patient = p.patient_id.replace("synth-p", "9")  # IDC ids are numeric
            name = f"{patient}_idx5_x{p.x}_y{p.y}_class{p.label}.png"
            path = root / patient / str(p.label) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode_png(p.pixels))
        done.write_text("ok")
    return sum(1 for _ in root.rglob("*.png"))


def copy_bytes(src: Path, dst: Path) -> None:
    """Read every patch file and write its bytes out unchanged (the baseline)."""
    with open(dst, "wb") as out:
        for path in sorted(src.rglob("*.png")):
            out.write(path.read_bytes())


def run_ingest(src: Path, dst: Path, workers: int = 1) -> None:
    from patchray.data.ingest import ingest_source
    from patchray.data.sources import create_source

    ingest_source(create_source("idc", src), str(dst), rows_per_file=2000, workers=workers)


def measure_ingest(src: Path, work: Path, files: int, *, rounds: int) -> dict[str, Any]:
    work.mkdir(parents=True, exist_ok=True)
    cores = os.cpu_count() or 1
    parallel = f"patchray ingest, {cores} processes"
    with single_thread():
        rates = interleaved_rates(
            {"copy source bytes": lambda: copy_bytes(src, work / "copy.bin"),
             "patchray ingest": lambda: run_ingest(src, work / "dataset"),
             parallel: lambda: run_ingest(src, work / "dataset-parallel", cores)},
            files, rounds=rounds, min_seconds=0.0,
        )
    ingest, copy = rates["patchray ingest"], rates["copy source bytes"]
    return {"patches": files, "copy_per_s": copy["median"], "ingest_per_s": ingest["median"],
            "ratio": ingest["median"] / copy["median"], "processes": cores,
            "parallel_per_s": rates[parallel]["median"],
            "speedup": rates[parallel]["median"] / ingest["median"], "rates": rates}


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    patients, per_patient, rounds = (4, 250, 2) if opts.quick else (8, 500, 3)
    rows = []
    for size in opts.sizes:
        src = opts.out / "data" / f"idc-src-{size}px-{patients}x{per_patient}"
        files = make_idc_tree(src, size, patients=patients, per_patient=per_patient)
        log(f"ingest {size}x{size}: {files} IDC-layout files, {rounds} interleaved rounds")
        rows.append({"size": size, **measure_ingest(src, opts.out / f"ingest-{size}", files,
                                                     rounds=rounds)})
    print(format_table(rows, ["size", "patches", "copy_per_s", "ingest_per_s", "ratio",
                              "processes", "parallel_per_s", "speedup"]), flush=True)
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{r['size']}x{r['size']}": {"copy source bytes": r["copy_per_s"],
                                      "patchray ingest": r["ingest_per_s"],
                                      "patchray ingest, parallel": r["parallel_per_s"]}
         for r in rows},
        title="IDC ingest vs copying the same files (patches/s)", ylabel="patches/s",
        log_scale=True,
    )
    return finish(opts, NAME, rows, chart, log)
