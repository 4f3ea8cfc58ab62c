"""``patchray bench slides``: heat-map throughput of ``slide predict`` against the raw model.

    python -m patchray.benchmarks slides --out runs/bench [--smoke] [--model REF --registry URI]

On synthetic pyramidal slides (:mod:`patchray.slides.synthetic`; nothing downloaded), each
round measures, one after the other on the same cores:

* **slide predict (whole job)**: :func:`patchray.slides.jobs.run_predict_job` from slide
  files to written outputs: one Ray task per slide tiles it (tissue mask, grid), the Ray Data
  job reads and scores every tile in actors, the driver writes heat maps, overlays, GeoJSON
  and summaries. Tiles per second of wall time, actor start-up and model compilation included.
* **its scoring stage**: the Ray Data part alone (reading + preprocessing + the model).
* **raw openvino**: the same model (f32, the same IR and batch size) compiled in this
  process, on the same tiles' pixels already read into memory: patches per second.

The ratio whole job / raw is the figure to quote (goal >= 0.7: the Ray job costs little over
the model itself); both use f32. Without ``--model`` two models are trained and registered
first with the CLI, as ``bench serve`` does: a cnn6 at 50x50 (``patchray train``) and a
``multiscale_cnn6`` at 50x50 with context at 4x (``patchray slide tile --context-scale 4``
on three small synthetic slides, then ``patchray train``), whose job reads two views per tile
and whose raw pass gets both views in memory. ``--smoke``: the tiny single-scale model only.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from patchray.benchmarks.common import BenchOptions, Log, bar_chart, finish, format_table, say

NAME = "slides"
GOAL = 0.7
WHOLE, STAGE, RAW = ("slide predict (whole Ray job)", "slide predict: Ray Data scoring stage",
                     "raw openvino (pixels in memory)")
PLANS = {  # slides, (width, height), rounds
    "smoke": (1, (1024, 768), 1),
    "quick": (2, (4096, 3072), 2),
    "full": (4, (4096, 3072), 3),
}


def synthetic_slides(folder: Path, count: int, size: tuple[int, int], log: Log, *,
                     seed0: int = 0) -> list[Path]:
    """``count`` synthetic slides (seeds ``seed0``...), written once and reused."""
    from patchray.slides.synthetic import write_synthetic_slide

    paths = []
    for i in range(count):
        path = folder / f"bench-{size[0]}x{size[1]}-{seed0 + i:02d}.tif"
        if not path.is_file():
            write_synthetic_slide(path, width=size[0], height=size[1], seed=seed0 + i)
        paths.append(path)
    log(f"{count} synthetic slide(s) {size[0]}x{size[1]} in {folder}")
    return paths


def read_all_tiles(scans: list[Any], context_scale: float | None = None
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Every tile's pixels in memory (what the raw model is fed), and with ``context_scale``
    every tile's context view too."""
    from patchray.slides.multiscale import read_context_tiles
    from patchray.slides.reader import open_slide
    from patchray.slides.tiling import read_tiles

    parts, contexts = [], []
    for scan in scans:
        tiles = scan.tile_objects()
        with open_slide(scan.slide.path) as reader:
            for i in range(0, len(tiles), 256):
                chunk = tiles[i:i + 256]
                parts.append(read_tiles(reader, chunk))
                if context_scale is not None:
                    contexts.append(read_context_tiles(reader, chunk, context_scale,
                                                       chunk[0].patch_size))
    return np.concatenate(parts), np.concatenate(contexts) if contexts else None


def raw_rate(predictor: Any, pixels: np.ndarray, batch: int,
             context: np.ndarray | None = None) -> float:
    """Patches/s of the compiled model over ``pixels`` (and their ``context`` views) in
    batches, contract applied."""
    t0 = time.perf_counter()
    for i in range(0, len(pixels), batch):
        predictor.predict_pixels(pixels[i:i + batch],
                                 None if context is None else context[i:i + batch])
    return len(pixels) / (time.perf_counter() - t0)


def measure(slide_paths: list[Path], model_dir: Path, out: Path, *, rounds: int,
            batch_size: int = 64, log: Log = say) -> dict[str, Any]:
    """The benchmark's core on a running Ray: ``rounds`` x (raw pass, whole job)."""
    from patchray.config import SlidePredictJobConfig
    from patchray.inference.predictor import PatchPredictor
    from patchray.registry.card import read_card
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import scan_on_ray, tiling_for_model

    cfg = SlidePredictJobConfig.model_validate(
        {"predict": {"precision": "f32", "batch_size": batch_size}})
    card = read_card(model_dir)
    slides = resolve_slide_inputs(slide_paths)
    scans = scan_on_ray(slides, tiling_for_model(cfg.tiling, card))
    pixels, context = read_all_tiles(scans, card.input.context_scale)
    predictor = PatchPredictor.from_card(model_dir, card, precision="f32",
                                         num_threads=os.cpu_count() or 1)
    raw_rate(predictor, pixels[:batch_size], batch_size,  # warm-up, as an actor's first batch
             None if context is None else context[:batch_size])
    views = "" if context is None else f" + context at {card.input.context_scale:g}x"
    log(f"{len(pixels)} tiles of {card.input.size}x{card.input.size}{views} on {len(slides)} "
        f"slide(s); model {card.ref} ({card.architecture}) f32, batch {batch_size}")
    from patchray.slides.jobs import run_predict_job

    measured: list[dict[str, Any]] = []
    for k in range(rounds):
        raw = raw_rate(predictor, pixels, batch_size, context)
        result = run_predict_job(slides, str(model_dir), out / f"round-{k}", cfg)
        if result.tiles != len(pixels):
            raise RuntimeError(f"the job scored {result.tiles} tiles, the raw pass {len(pixels)}")
        whole = result.tiles_per_s
        stage = result.tiles / max(result.seconds["scoring"], 1e-9)
        measured.append({"round": k, "raw": raw, "whole": whole, "stage": stage,
                         "seconds": result.seconds})
        log(f"  round {k + 1}/{rounds}: raw {raw:,.0f} patches/s; whole job {whole:,.0f} "
            f"tiles/s ({result.seconds['total']:.1f}s: tiling {result.seconds['tiling']:.1f}, "
            f"scoring {result.seconds['scoring']:.1f}, writing {result.seconds['writing']:.1f}); "
            f"scoring stage {stage:,.0f} tiles/s; ratio {whole / raw:.2f}")
    import json

    plan = json.loads((out / f"round-{rounds - 1}" / "summary.json").read_text())["scoring"]
    med = {key: float(statistics.median(m[key] for m in measured)) for key in ("raw", "whole", "stage")}
    return {"tiles": int(len(pixels)), "slides": len(slides), "model": card.ref,
            "architecture": card.architecture, "context_scale": card.input.context_scale,
            "input_size": card.input.size, "batch_size": batch_size, "scoring_plan": plan,
            "rounds": measured, "median": med,
            "ratio_whole_vs_raw": med["whole"] / med["raw"],
            "ratio_stage_vs_raw": med["stage"] / med["raw"]}


def train_multiscale_model(work: Path, log: Log) -> Path:
    """A ``multiscale_cnn6`` (50x50, context at 4x) trained and registered through the CLI
    (``patchray slide tile --context-scale 4`` on three small synthetic slides, one patient
    each, then ``patchray train``, each a child process with its own local Ray); rerunning
    with the same ``--out`` reuses it. Returns the version folder."""
    from patchray.benchmarks.serve import BENCH_ALIAS
    from patchray.errors import RegistryError
    from patchray.slides.jobs import resolve_model

    name, registry = "slide-bench-multiscale_cnn6-50px", work / "registry"
    with contextlib.suppress(RegistryError):  # not registered yet: train it
        return resolve_model(f"{name}@{BENCH_ALIAS}", registry=str(registry))[1]
    t0 = time.perf_counter()
    slides = synthetic_slides(work / "ms-train-slides", 3, (1024, 768), log, seed0=100)
    data = work / "data" / name
    log("training multiscale_cnn6 at 50x50 (context 4x) for the benchmark: slide tile, "
        "then patchray train")
    _cli(["slide", "tile", *map(str, slides), "--out", str(data), "--masks", str(slides[0].parent),
          "--context-scale", "4", "--set", "tiling.patch_size=50", "--set", "tiling.stride=50",
          "--set", "tiling.target_mpp=null"])
    _cli(["train", *[a for o in (
        f"name={name}", "dataset=synthetic-slides", f"runs_root={work / 'runs'}",
        f"data.root={data}", "train.model=multiscale_cnn6", "train.input_size=50",
        "train.epochs=2", "train.batch_size=32", "export.precisions=[f32]",
        f"export.name={name}", f"registry.root={registry}", f"registry.alias={BENCH_ALIAS}")
        for a in ("--set", o)]])
    folder = resolve_model(f"{name}@{BENCH_ALIAS}", registry=str(registry))[1]
    log(f"registered {name} ({time.perf_counter() - t0:.0f}s)")
    return folder


def _cli(args: list[str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "patchray.cli", *args], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"patchray {args[0]} exited {proc.returncode}:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    from patchray.benchmarks.common import start_ray

    mode = "smoke" if opts.extra.get("smoke") else "quick" if opts.quick else "full"
    count, size, rounds = PLANS[mode]
    work = opts.out / "work-slides"
    if opts.extra.get("model"):
        from patchray.benchmarks.serve import existing_model

        models = [Path(existing_model(opts.extra["model"], opts.extra.get("registry") or "",
                                      log).folder)]
    else:  # before Ray starts here: `patchray train` runs its own local Ray
        from patchray.benchmarks.serve import train_model

        models = [Path(train_model(work, "smoke" if mode == "smoke" else "quick", log).folder)]
        if mode != "smoke":
            models.append(train_multiscale_model(work, log))
    paths = synthetic_slides(work / "slides", count, size, log)
    started = not ray.is_initialized()
    if started:
        start_ray(num_cpus=4)
    try:
        found = [measure(paths, m, work / "predict" / m.parent.name / m.name, rounds=rounds,
                         log=log) for m in models]
    finally:
        if started:
            ray.shutdown()
    rows = []
    for f in found:
        med, label = f["median"], f"{f['architecture']} {f['input_size']}px"
        rows += [{"model": label, "variant": WHOLE, "per_s": med["whole"],
                  "vs_raw": f["ratio_whole_vs_raw"]},
                 {"model": label, "variant": STAGE, "per_s": med["stage"],
                  "vs_raw": f["ratio_stage_vs_raw"]},
                 {"model": label, "variant": RAW, "per_s": med["raw"], "vs_raw": 1.0}]
    print(format_table(rows, ["model", "variant", "per_s", "vs_raw"]), flush=True)
    met = all(f["ratio_whole_vs_raw"] >= GOAL for f in found)
    for f in found:
        log(f"{f['architecture']}: whole job / raw = {f['ratio_whole_vs_raw']:.2f} (goal >= "
            f"{GOAL}: {'met' if f['ratio_whole_vs_raw'] >= GOAL else 'NOT met'})")
    threads = os.cpu_count() or 1
    chart = bar_chart(opts.out / f"{NAME}.png",
                      {f"{f['architecture']} {f['input_size']}px, {f['tiles']} tiles":
                       {r["variant"]: r["per_s"] for r in rows
                        if r["model"] == f"{f['architecture']} {f['input_size']}px"}
                       for f in found},
                      title=f"slide heat maps vs the raw model on {threads} cores "
                            f"(median of {rounds} round(s))", ylabel="tiles (patches) / s")
    first = found[0]  # the single-scale model's figures stay at the top level
    return finish(opts, NAME, rows, chart, log, mode=mode, goal=GOAL, goal_met=met, **first,
                  models=found,
                  notes=["whole job: slide files -> outputs written, Ray task start-up, actor "
                         "start-up and model compilation included",
                         "raw: the same IR, f32, same batch size, in this process with every "
                         "core's thread, on pixels (and context views) read beforehand"])
