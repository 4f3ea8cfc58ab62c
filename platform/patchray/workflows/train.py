"""``patchray train``: train on an ingested dataset, export the best checkpoint, evaluate it.

    runs/<name>/
      config.yaml           the resolved job config
      logs/patchray.log     everything the job and Ray wrote (the CLI puts it there)
      train/                Ray Train run: checkpoints (best K by val AUC), replica digests
      best_checkpoint/      the best checkpoint, local copy
      model/<name>/<ver>/   OpenVINO IR + metadata.json (what gets served)
      report/               metrics.json, ROC / PR / confusion / learning-curve PNGs
"""

from __future__ import annotations

import datetime as dt
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import __version__, runtime, storage
from patchray.config import DataConfig, TrainJobConfig, dump_config
from patchray.data.ingest import ingest_synthetic
from patchray.data.manifest import MANIFEST, PatchDataset
from patchray.errors import ConfigError
from patchray.evaluation.evaluate import Evaluation, evaluate_model
from patchray.export.artifact import ModelMetadata, write_metadata
from patchray.export.openvino_export import ExportResult, export_checkpoint

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainedModel:
    model_dir: Path
    metrics: dict[str, Any]


@dataclass(frozen=True)
class TrainJobResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]


def run_dir_of(cfg: TrainJobConfig) -> Path:
    """``<runs_root>/<name>``: a rerun of the same name resumes there."""
    return (Path(cfg.runs_root) / cfg.name).resolve()


def open_or_make_dataset(data: DataConfig, root: str, *, synthetic: bool) -> PatchDataset:
    """Open the dataset at ``root``; a synthetic one that is not there yet is made first
    (through the same ingest path as real sources)."""
    if synthetic and not storage.exists(storage.join(root, MANIFEST)):
        log.info("making synthetic H&E patches at %s", root)
        ingest_synthetic(data, root, workers=os.cpu_count() or 1)
    dataset = PatchDataset.open(root)
    log.info("dataset %s (%s): %s", root, dataset.encoding, dataset.summary())
    return dataset


def train_export_evaluate(cfg: TrainJobConfig, dataset: PatchDataset,
                          run_dir: Path) -> TrainedModel:
    """Train (or resume), export the best checkpoint behind the parity gate, evaluate it
    with the IR, and write the model's metadata once, last."""
    from patchray.training.trainer import run_training

    t = cfg.train
    log.info("training %s with Ray Train (%d workers, %d epochs)", t.model, t.num_workers,
             t.epochs)
    outcome = run_training(cfg, dataset=dataset, storage_root=str(run_dir), run_name="train",
                           local_dir=str(run_dir))
    name = cfg.export.name or f"{t.model}-{cfg.dataset}"
    model_dir = run_dir / "model" / name / cfg.export.version
    exported = export_checkpoint(outcome.best_checkpoint_dir, model_dir, dataset,
                                 parity_atol=cfg.export.parity_atol,
                                 val_holdout=cfg.data.val_holdout)
    evaluation = evaluate_model(exported.model_xml, exported.preprocess, dataset, cfg.eval,
                                report_dir=run_dir / "report", history=outcome.history,
                                best_epoch=exported.epoch, val_holdout=cfg.data.val_holdout)
    write_metadata(model_dir, model_metadata(cfg, name, dataset, exported, evaluation))
    log.info("report: %s; model: %s", run_dir / "report", model_dir)
    return TrainedModel(model_dir, evaluation.metrics)


def model_metadata(cfg: TrainJobConfig, name: str, dataset: PatchDataset,
                   exported: ExportResult, evaluation: Evaluation) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=cfg.export.version,
        architecture=exported.architecture,
        model_args=exported.model_args,
        dataset=cfg.dataset,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input=exported.preprocess,
        class_names=dataset.class_names,
        threshold=evaluation.threshold,
        threshold_rule=evaluation.rule,
        metrics=evaluation.summary(),
        files={"fp32": exported.model_xml.name},
        parity={"keras_vs_openvino_max_abs_diff": exported.parity_max_abs_diff,
                "patches": exported.parity_patches, "inference_precision": "f32"},
        patchray_version=__version__,
    )


def run_train_job(cfg: TrainJobConfig, *, shutdown: bool = True) -> TrainJobResult:
    """Train on an ingested dataset, export, evaluate and write the report.

    The run directory is ``<runs_root>/<name>``. Submitting the same job again after a
    crash finds the run's checkpoints there and resumes after the latest one; submitting a
    finished run again trains nothing and only re-exports and re-evaluates its best
    checkpoint. A ``synthetic`` dataset missing at ``data.root`` is generated first.
    """
    if not cfg.data.root:
        raise ConfigError(
            "data.root is required for `patchray train`: point it at an ingested dataset "
            "(patchray ingest ... --out URI), or run `patchray demo` to make one"
        )
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    log.info("run directory: %s", run_dir)
    runtime.init_ray(cfg.ray)
    try:
        dataset = open_or_make_dataset(cfg.data, cfg.data.root,
                                       synthetic=cfg.dataset == "synthetic")
        trained = train_export_evaluate(cfg, dataset, run_dir)
        return TrainJobResult(run_dir, trained.model_dir, trained.metrics)
    finally:
        if shutdown:  # False: a caller's cluster (tests) outlives the job
            runtime.shutdown()
