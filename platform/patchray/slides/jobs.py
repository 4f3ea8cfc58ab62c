"""The Ray jobs over whole slides: ``patchray slide tile`` and ``patchray slide predict``.

Thin Ray glue over plain functions (:mod:`~patchray.slides.inputs`,
:mod:`~patchray.slides.heatmap`, :mod:`~patchray.slides.scoring`):

- **tile**: one Ray task per slide scans it (tissue mask, grid, centre labels, thumbnail
  with the grid and a count file in ``<out>/slides/``), inside a
  :class:`~patchray.data.sources.SlideSource`, so ``patchray.data.ingest`` splits by
  patient, refuses duplicates, reports and writes the manifest exactly as for patches.
- **predict**: one Ray task per slide tiles it without a mask; then a Ray Data job,
  ``from_items(tiles).map_batches(SlideScorer, concurrency=N)``, reads and scores the tiles
  in actors that each hold the compiled model and open slides once; the driver writes the
  heat map, its overlay, the GeoJSON and the summary per slide.

Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from patchray import storage
from patchray.config import SlidePredictJobConfig, SlideTileJobConfig, TilingConfig, dump_config
from patchray.errors import ConfigError
from patchray.slides.inputs import SlideInput, SlideScan, scan_slide

log = logging.getLogger(__name__)

THUMBNAILS = "slides"  # <out>/slides/<slide>.png|json beside the dataset's splits


# --------------------------------------------------------------------------- Ray glue


def _scan_task(slide: SlideInput, config: TilingConfig, thumbnails: str | None, backend: str,
               max_side: int, card_mpp: float | None) -> SlideScan:
    if card_mpp is not None:
        config = tiling_for_slide(slide, config, card_mpp, backend)
    return scan_slide(slide, config, thumbnails=thumbnails, backend=backend,
                      thumbnail_max_side=max_side)


def scan_on_ray(slides: Sequence[SlideInput], config: TilingConfig, *,
                thumbnails: str | None = None, backend: str = "auto", max_side: int = 1024,
                card_mpp: float | None = None) -> list[SlideScan]:
    """:func:`~patchray.slides.inputs.scan_slide` in one Ray task per slide, in order."""
    import ray

    task = ray.remote(num_cpus=1, max_retries=1)(_scan_task)
    return ray.get([task.remote(s, config, thumbnails, backend, max_side, card_mpp)
                    for s in slides])


def ray_scan_all(source: Any) -> list[SlideScan]:
    """``SlideSource.scan_all`` on Ray (module level: the source is pickled for ingest)."""
    return scan_on_ray(source.slides, source.config, thumbnails=source.thumbnails,
                       backend=source.backend, max_side=source.thumbnail_max_side)


# --------------------------------------------------------------------------- tile


def run_tile_job(slides: Sequence[SlideInput], out: str, cfg: SlideTileJobConfig, *,
                 split_map: Mapping[str, str] | None = None) -> Any:
    """Tile ``slides`` on Ray into the Parquet dataset at ``out``; returns ingest's result
    (manifest and report). Splits are by patient: fewer than 3 patients need ``split_map``
    (the error says so and suggests one), unlabelled tiles all go to ``unlabelled``."""
    from patchray import runtime
    from patchray.data.ingest import ingest_source
    from patchray.data.sources import SlideSource

    runtime.init_ray(cfg.ray)
    thumbnails = storage.join(out, THUMBNAILS)
    source = SlideSource(list(slides), cfg.tiling, backend=cfg.slides.backend,
                         thumbnails=thumbnails, thumbnail_max_side=cfg.slides.thumbnail_max_side,
                         scan_all=ray_scan_all)
    if cfg.context_scale is not None:  # two views per tile, for multiscale_* models
        from patchray.slides.multiscale import MultiScaleSource

        source = MultiScaleSource(source, cfg.context_scale)
    data = cfg.ingest
    result = ingest_source(source, out, train=data.split.train, val=data.split.val,
                           seed=data.split.seed, rows_per_file=data.rows_per_file,
                           split_map=split_map, encoding=data.encoding,
                           workers=data.workers or os.cpu_count() or 1)
    storage.write_bytes(storage.join(thumbnails, "config.yaml"), dump_config(cfg).encode())
    return result


# --------------------------------------------------------------------------- predict


def tiling_for_model(config: TilingConfig, card: Any) -> TilingConfig:
    """The tiling ``slide predict`` uses: ``patch_size`` is the model's input size (set
    explicitly, it must agree); ``level`` / ``target_mpp`` as given, else the card's
    ``microns_per_pixel`` per slide where the slide states its own (:func:`tiling_for_slide`)."""
    size = card.input.size
    if "patch_size" in config.model_fields_set and config.patch_size != size:
        raise ConfigError(f"tiling.patch_size={config.patch_size}: {card.ref} takes "
                          f"{size}x{size} patches (its input contract); leave patch_size unset "
                          f"or set it to {size}")
    return config.model_copy(update={"patch_size": size})


def tiling_for_slide(slide: SlideInput, config: TilingConfig, card_mpp: float,
                     backend: str) -> TilingConfig:
    """The model's microns per pixel as ``target_mpp`` when neither ``level`` nor
    ``target_mpp`` was chosen and the slide states its own; else the config as is."""
    from patchray.slides.reader import open_slide

    if config.level is not None or config.target_mpp is not None:
        return config
    with open_slide(slide.path, backend=backend) as reader:  # type: ignore[arg-type]
        if reader.mpp is None:
            log.warning("%s: no microns per pixel in the file; tiling level 0 although the "
                        "model was trained at %.3g um/px", slide.path, card_mpp)
            return config
    return config.model_copy(update={"target_mpp": card_mpp})


@dataclass(frozen=True)
class PredictResult:
    out: Path
    summaries: list[dict[str, Any]]
    tiles: int
    seconds: dict[str, float]  # tiling, scoring, writing, total

    @property
    def tiles_per_s(self) -> float:
        return self.tiles / max(self.seconds["total"], 1e-9)


def resolve_model(model: str, *, registry: str = "", precision: str = "auto") -> tuple[Any, Path]:
    """(card, local version folder) of ``NAME@ALIAS``, ``NAME@VERSION`` or a folder."""
    from patchray.serving.model_source import ModelSource

    source = ModelSource(model, registry=registry, precision=precision)
    card = source.card()
    folder = source.folder or source.registry.local_dir(card)  # type: ignore[union-attr]
    return card, Path(folder)


def scoring_plan(cfg: SlidePredictJobConfig, tiles: int) -> tuple[int, int]:
    """(actors, OpenVINO threads per actor) from the cluster's CPUs and this node's cores."""
    import ray

    p = cfg.predict
    cpus = float(ray.cluster_resources().get("CPU", 1.0))
    actors = p.concurrency or max(1, int(cpus // p.cpus_per_actor))
    actors = max(1, min(actors, math.ceil(tiles / p.batch_size)))
    threads = p.threads_per_actor or max(1, (os.cpu_count() or 1) // actors)
    return actors, threads


def score_tiles(scans: Sequence[SlideScan], model_dir: Path, cfg: SlidePredictJobConfig
                ) -> tuple[dict[int, tuple[np.ndarray, np.ndarray]], dict[str, Any]]:
    """The Ray Data job: every tile of every slide scored; slide index -> (xy, p)."""
    import ray
    import ray.data

    p = cfg.predict
    rows = [{"slide": i, "x": x, "y": y} for i, sc in enumerate(scans) for x, y, *_ in sc.tiles]
    if not rows:
        return {}, {"actors": 0, "threads_per_actor": 0, "batch_size": p.batch_size}
    slides = [{**sc.geometry, "slide_id": sc.slide.slide_id, "path": sc.slide.path}
              for sc in scans]
    actors, threads = scoring_plan(cfg, len(rows))
    blocks = max(1, min(math.ceil(len(rows) / p.batch_size), 4 * actors))
    ds = ray.data.from_items(rows, override_num_blocks=blocks).map_batches(
        _scorer_class(), fn_constructor_kwargs={
            "slides": slides, "model_dir": str(model_dir), "precision": p.precision,
            "backend": cfg.slides.backend, "num_threads": threads},
        batch_size=p.batch_size, batch_format="numpy", concurrency=actors,
        num_cpus=p.cpus_per_actor)
    where, probability = [], []
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        where.append(np.stack([batch["slide"], batch["x"], batch["y"]], axis=1).astype(np.int64))
        probability.append(np.asarray(batch["probability"], dtype=np.float32))
    sxy = np.concatenate(where) if where else np.zeros((0, 3), np.int64)
    prob = np.concatenate(probability) if probability else np.zeros(0, np.float32)
    if len(sxy) != len(rows):
        raise RuntimeError(f"the Ray Data job scored {len(sxy)} tiles of {len(rows)}")
    out = {}
    for i in range(len(scans)):
        mine = sxy[:, 0] == i
        out[i] = (sxy[mine, 1:3], prob[mine])
    return out, {"actors": actors, "threads_per_actor": threads, "batch_size": p.batch_size,
                 "blocks": blocks}


def _scorer_class() -> type:
    from patchray.slides.scoring import SlideScorer

    return SlideScorer


def write_slide_outputs(scan: SlideScan, xy: np.ndarray, probabilities: np.ndarray, out: Path,
                        *, card: Any, precision: str, threshold: float, smoothing: int,
                        backend: str, max_side: int, include_edges: bool) -> dict[str, Any]:
    """Per slide: ``<id>.heatmap.npy`` (the grid, NaN without tissue), ``<id>.heatmap.png``
    (over the thumbnail), ``<id>.geojson`` (regions >= threshold, QuPath-ready) and
    ``<id>.summary.json``; returns the summary."""
    from patchray.slides.heatmap import heat_map, overlay, slide_summary, thumbnail_of, tumour_regions
    from patchray.slides.reader import open_slide

    g, sid = scan.geometry, scan.slide.slide_id
    heat = heat_map(xy, probabilities, scan.dimensions, side0=g["side0"], stride0=g["stride0"],
                    include_edges=include_edges)
    mpp0 = (scan.mpp[0] + scan.mpp[1]) / 2 if scan.mpp else None
    _, record = card.precision(precision)
    weights = Path(record.file).with_suffix(".bin").name
    model = {"name": card.name, "version": card.version, "ref": card.ref, "precision": precision,
             "sha256": card.files.get(weights, ""), "input": card.input.model_dump(mode="json"),
             # the heat map holds the predictor's (calibrated) probabilities, as the threshold
             "calibration": record.calibration.method if record.calibration else "none"}
    summary = {"slide_id": sid, "path": scan.slide.path, "dimensions": list(scan.dimensions),
               "mpp_level0": list(scan.mpp) if scan.mpp else None, "level": g["level"],
               "patch_microns_per_pixel": g["mpp"], "windows": scan.windows,
               **slide_summary(heat, threshold, mpp=mpp0, tissue_fraction=scan.tissue_fraction,
                               smoothing=smoothing),
               "model": model}
    out.mkdir(parents=True, exist_ok=True)
    files = {"heatmap": f"{sid}.heatmap.npy", "overlay": f"{sid}.heatmap.png",
             "geojson": f"{sid}.geojson", "summary": f"{sid}.summary.json"}
    np.save(out / files["heatmap"], heat.grid)
    regions = tumour_regions(heat, threshold, properties={"slide_id": sid, "model": card.ref})
    (out / files["geojson"]).write_text(json.dumps(regions))
    score = summary["slide_score"]
    caption = (f"{sid}: {summary['tiles']} tiles, score {score:.3f}, {card.ref} "
               f"({precision}) threshold {threshold:.3f}" if score is not None else
               f"{sid}: no tissue tiles")
    with open_slide(scan.slide.path, backend=backend) as reader:  # type: ignore[arg-type]
        picture = overlay(thumbnail_of(reader, max_side=max_side), heat, threshold=threshold,
                          caption=caption)
    picture.save(out / files["overlay"])
    summary["regions"] = len(regions["features"])
    summary["files"] = files
    (out / files["summary"]).write_text(json.dumps(summary, indent=1))
    return summary


def run_predict_job(slides: Sequence[SlideInput], model: str, out: str | Path,
                    cfg: SlidePredictJobConfig, *, registry: str = "") -> PredictResult:
    """Heat maps, overlays, GeoJSON and summaries for ``slides`` with ``model`` (a registry
    reference or a version folder), written to the local folder ``out``."""
    from patchray import runtime

    t0 = time.perf_counter()
    out = Path(out)
    card, folder = resolve_model(model, registry=registry, precision=cfg.predict.precision)
    precision, record = card.precision(cfg.predict.precision)
    threshold = float(record.threshold)
    tiling = tiling_for_model(cfg.tiling, card)
    runtime.init_ray(cfg.ray)
    unlabelled = [replace(s, mask=None, labelled=False) for s in slides]
    scans = scan_on_ray(unlabelled, tiling, backend=cfg.slides.backend,
                        card_mpp=card.input.microns_per_pixel)
    t1 = time.perf_counter()
    scored, plan = score_tiles(scans, folder, cfg)
    t2 = time.perf_counter()
    summaries = []
    for i, scan in enumerate(scans):
        xy, p = scored.get(i, (np.zeros((0, 2), np.int64), np.zeros(0, np.float32)))
        summaries.append(write_slide_outputs(
            scan, xy, p, out, card=card, precision=precision, threshold=threshold,
            smoothing=cfg.predict.smoothing, backend=cfg.slides.backend,
            max_side=cfg.slides.thumbnail_max_side, include_edges=tiling.include_edges))
    t3 = time.perf_counter()
    tiles = sum(s["tiles"] for s in summaries)
    seconds = {"tiling": round(t1 - t0, 3), "scoring": round(t2 - t1, 3),
               "writing": round(t3 - t2, 3), "total": round(t3 - t0, 3)}
    (out / "config.yaml").write_text(dump_config(cfg))
    (out / "summary.json").write_text(json.dumps(
        {"model": card.ref, "precision": precision, "threshold": threshold, "tiles": tiles,
         "seconds": seconds, "tiles_per_s": round(tiles / max(seconds["total"], 1e-9), 1),
         "scoring": plan, "slides": [{k: s[k] for k in ("slide_id", "tiles", "slide_score",
                                                        "positive_tiles", "regions")}
                                     for s in summaries]}, indent=1))
    return PredictResult(out, summaries, tiles, seconds)
