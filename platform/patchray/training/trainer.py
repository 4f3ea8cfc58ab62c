"""Build and run the Ray Train ``TensorflowTrainer`` for a job config (driver side)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import storage
from patchray.config import PipelineConfig
from patchray.data.ingest import read_manifest
from patchray.data.pipeline import training_dataset
from patchray.models.keras_compat import LEGACY_KERAS_ENV, ensure_legacy_keras_env
from patchray.training.loop import CHECKPOINT_META, train_loop_per_worker

# Ray Train would route print() through logging and echo it twice to the driver.
QUIET_TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


@dataclass(frozen=True)
class TrainingOutcome:
    best_checkpoint_dir: str  # local directory (downloaded if the run lives in object storage)
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    storage_uri: str  # where Ray Train keeps the run (checkpoints, results)


def loop_config(cfg: PipelineConfig, replica_report_uri: str = "") -> dict[str, Any]:
    """The plain-dict config every worker receives."""
    t = cfg.train
    return {
        "model": t.model,
        "model_args": dict(t.model_args),
        "input_size": t.input_size,
        "epochs": t.epochs,
        "batch_size": t.batch_size,
        "learning_rate": t.learning_rate,
        "intra_op_threads": t.intra_op_threads,
        "inter_op_threads": t.inter_op_threads,
        "seed": t.seed,
        "cache_val": t.cache_val,
        "replica_report_uri": replica_report_uri,
    }


def scaling_config(cfg: PipelineConfig) -> Any:
    from ray.train import ScalingConfig

    t = cfg.train
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        # TensorFlow sees only the GPU Ray assigned (Ray sets CUDA_VISIBLE_DEVICES per worker).
        resources["GPU"] = t.gpus_per_worker
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)


def build_trainer(
    cfg: PipelineConfig, *, data_root: str, storage_root: str, run_name: str
) -> Any:
    """A ready-to-``fit`` TensorflowTrainer over the train/val splits at ``data_root``."""
    ensure_legacy_keras_env()  # ray.train.tensorflow imports TensorFlow
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig
    from ray.train.tensorflow import TensorflowTrainer

    manifest = read_manifest(data_root)
    size = cfg.train.input_size
    datasets = {
        "train": training_dataset(
            data_root,
            "train",
            size=size,
            augment=cfg.data.augment,
            label_counts=manifest["splits"]["train"]["labels"],
            weighting=cfg.data.class_weighting,
        ),
        "val": training_dataset(data_root, "val", size=size, augment=False),
    }
    run_config = RunConfig(
        name=run_name,
        storage_path=storage_root,
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.train.keep_checkpoints,
            checkpoint_score_attribute="val_auc",
            checkpoint_score_order="max",
        ),
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        worker_runtime_env={"env_vars": {**LEGACY_KERAS_ENV, **QUIET_TF_ENV}},
    )
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, storage.join(storage_root, run_name, "replicas")),
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        # Only train is sharded; every worker sees all of val (rank 0 scores it).
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=run_config,
    )


def run_training(
    cfg: PipelineConfig, *, data_root: str, storage_root: str, run_name: str, local_dir: str
) -> TrainingOutcome:
    """Train; return the best checkpoint (by validation AUC) as a local directory."""
    trainer = build_trainer(cfg, data_root=data_root, storage_root=storage_root, run_name=run_name)
    result = trainer.fit()
    if result.error:
        raise result.error
    best = result.get_best_checkpoint(metric="val_auc", mode="max")
    if best is None:
        raise RuntimeError(f"training run {run_name} reported no checkpoint")
    target = Path(local_dir) / "best_checkpoint"
    best.to_directory(str(target))
    meta = json.loads((target / CHECKPOINT_META).read_text())
    best_metrics = next(m for m in meta["history"] if m["epoch"] == meta["epoch"])
    return TrainingOutcome(
        best_checkpoint_dir=os.fspath(target),
        best_metrics=best_metrics,
        history=_full_history(result, meta),
        storage_uri=storage.join(storage_root, run_name),
    )


def _full_history(result: Any, best_meta: dict[str, Any]) -> list[dict[str, Any]]:
    """All epochs' metrics: the latest checkpoint's history covers every epoch so far."""
    latest = result.checkpoint
    if latest is None:
        return best_meta["history"]
    with latest.as_directory() as d:
        return json.loads((Path(d) / CHECKPOINT_META).read_text())["history"]
