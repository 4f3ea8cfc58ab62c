"""Build and run the Ray Train ``TensorflowTrainer`` for a job config (driver side).

Restarts: Ray Train (V2) keeps a run's checkpoint list in
``<storage_root>/<run_name>/checkpoint_manager_snapshot.json``. A trainer created again with
the same ``RunConfig(name, storage_path)`` loads that snapshot and hands the latest checkpoint
to the new workers (``ray.train.get_checkpoint()``); ``resume_from_checkpoint=`` is gone in
V2. The same mechanism restarts the worker group after a worker dies (``FailureConfig``).
:func:`run_training` adds what Ray does not do: it refuses to resume into a different
network, and it does not start workers at all when the run already trained every epoch.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from patchray import storage
from patchray.config import PipelineConfig
from patchray.data.ingest import read_manifest
from patchray.data.pipeline import raise_explained, training_dataset
from patchray.errors import ConfigError
from patchray.models.keras_compat import LEGACY_KERAS_ENV, ensure_legacy_keras_env
from patchray.training.loop import (
    CHECKPOINT_META,
    architecture_mismatch,
    train_loop_per_worker,
)

# Ray Train would route print() through logging and echo it twice to the driver.
QUIET_TF_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "RAY_TRAIN_ENABLE_PRINT_PATCH": "0"}


@dataclass(frozen=True)
class TrainingOutcome:
    best_checkpoint_dir: str  # local directory (downloaded if the run lives in object storage)
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    storage_uri: str  # where Ray Train keeps the run (checkpoints, results)
    epochs_before: int = 0  # epochs the run had already trained when this call started
    trained: bool = True  # False: the run was already complete, no worker was started


def loop_config(cfg: PipelineConfig, replica_report_uri: str = "") -> dict[str, Any]:
    """The plain-dict config every worker receives."""
    t = cfg.train
    return {
        "model": t.model,
        "model_args": dict(t.model_args),
        "input_size": t.input_size,
        "mixed_precision": t.mixed_precision,
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
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned each worker; the TensorFlow
        # backend does not widen it to the node's GPUs (share_cuda_visible_devices=False).
        resources["GPU"] = t.gpus_per_worker
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources)


def run_config(cfg: PipelineConfig, *, storage_root: str, run_name: str) -> Any:
    """Where the run lives, which checkpoints it keeps (best K by val AUC), how often it retries."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig

    return RunConfig(
        name=run_name,
        **storage.ray_storage_args(storage_root),  # s3://: an explicit, endpoint-aware fs
        checkpoint_config=CheckpointConfig(
            num_to_keep=cfg.train.keep_checkpoints,
            checkpoint_score_attribute="val_auc",
            checkpoint_score_order="max",
        ),
        failure_config=FailureConfig(max_failures=cfg.train.max_failures),
        worker_runtime_env={"env_vars": {**LEGACY_KERAS_ENV, **QUIET_TF_ENV, **storage.s3_env()}},
    )


def build_trainer(
    cfg: PipelineConfig, *, data_root: str, storage_root: str, run_name: str
) -> Any:
    """A ready-to-``fit`` TensorflowTrainer over the train/val splits at ``data_root``."""
    ensure_legacy_keras_env()  # ray.train.tensorflow imports TensorFlow
    from ray.train import DataConfig
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
            val_holdout=cfg.data.val_holdout,
        ),
        "val": training_dataset(data_root, "val", size=size, augment=False,
                                val_holdout=cfg.data.val_holdout),
    }
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, storage.join(storage_root, run_name, "replicas")),
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        # Only train is sharded; every worker sees all of val (rank 0 scores it).
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=run_config(cfg, storage_root=storage_root, run_name=run_name),
    )


def previous_result(storage_root: str, run_name: str) -> Any | None:
    """The Ray Train ``Result`` of an earlier run with this name, or None if there is none."""
    from ray.train import Result
    from ray.train.v2._internal.constants import CHECKPOINT_MANAGER_SNAPSHOT_FILENAME

    # Ray Train's CheckpointManager rewrites this file after every reported checkpoint; it is
    # what a trainer with the same RunConfig(name, storage_path) restores from.
    run_uri = storage.join(storage_root, run_name)
    if not storage.exists(storage.join(run_uri, CHECKPOINT_MANAGER_SNAPSHOT_FILENAME)):
        return None
    fs, path = storage.resolve(run_uri)
    result = Result.from_path(path, storage_filesystem=fs)
    return result if result.checkpoint is not None else None


def _read_meta(checkpoint: Any) -> dict[str, Any]:
    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / CHECKPOINT_META).read_text())


def run_training(
    cfg: PipelineConfig,
    *,
    data_root: str,
    storage_root: str,
    run_name: str,
    local_dir: str,
    log: Callable[[str], None] = print,
) -> TrainingOutcome:
    """Train (or resume, or skip a finished run); return the best checkpoint by val AUC.

    The run lives at ``<storage_root>/<run_name>``. If it has checkpoints already, training
    continues after the latest one; if that one is the last epoch, no worker is started and
    the outcome describes the finished run (so a rerun only re-exports and re-evaluates).
    Resuming into a different network (model, model_args, input_size, mixed_precision) is a
    :class:`ConfigError`.
    """
    epochs_before, result = 0, previous_result(storage_root, run_name)
    if result is not None:
        latest = _read_meta(result.checkpoint)
        mismatch = architecture_mismatch(latest, loop_config(cfg))
        if mismatch:
            raise ConfigError(
                f"run {storage.join(storage_root, run_name)} was trained with another "
                f"network ({'; '.join(mismatch)}); resume it with its own config or give "
                "this job a new name"
            )
        epochs_before = latest["epoch"] + 1
    if epochs_before >= cfg.train.epochs:
        log(f"run {run_name} already trained {epochs_before} epoch(s) (train.epochs="
            f"{cfg.train.epochs}): not training again, using its best checkpoint")
    else:
        if epochs_before:
            log(f"resuming from epoch {epochs_before}/{cfg.train.epochs} checkpoint of run "
                f"{run_name}: training epochs {epochs_before + 1}..{cfg.train.epochs}")
        trainer = build_trainer(cfg, data_root=data_root, storage_root=storage_root,
                                run_name=run_name)
        result = trainer.fit()
        if result.error:
            raise_explained(result.error, data_root)
    return outcome_from_result(
        result, storage.join(storage_root, run_name), Path(local_dir),
        epochs_before=epochs_before, trained=epochs_before < cfg.train.epochs,
    )


def outcome_from_result(
    result: Any, storage_uri: str, local_dir: Path, **extra: Any
) -> TrainingOutcome:
    """Copy the best checkpoint (by val AUC, not the latest) to ``local_dir/best_checkpoint``."""
    if not result.best_checkpoints:
        raise RuntimeError(f"training run {storage_uri} reported no checkpoint")
    best = result.get_best_checkpoint(metric="val_auc", mode="max")
    target = local_dir / "best_checkpoint"
    shutil.rmtree(target, ignore_errors=True)  # a rerun must not mix two checkpoints' files
    best.to_directory(str(target))
    meta = json.loads((target / CHECKPOINT_META).read_text())
    best_metrics = next(m for m in meta["history"] if m["epoch"] == meta["epoch"])
    # The latest checkpoint's history covers every epoch so far (the best one's may stop early).
    history = _read_meta(result.checkpoint)["history"] if result.checkpoint else meta["history"]
    return TrainingOutcome(
        best_checkpoint_dir=str(target),
        best_metrics=best_metrics,
        history=history,
        storage_uri=storage_uri,
        **extra,
    )
