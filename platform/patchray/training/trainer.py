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
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import runtime, storage
from patchray.config import TrainJobConfig
from patchray.data.manifest import PatchDataset
from patchray.data.pipeline import checksum_error, training_dataset
from patchray.errors import ConfigError, PatchrayError, TrainingError
from patchray.models.keras_compat import ensure_legacy_keras_env
from patchray.training.loop import CHECKPOINT_META, architecture_mismatch, train_loop_per_worker

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainingOutcome:
    best_checkpoint_dir: str  # local directory (downloaded if the run lives in object storage)
    best_metrics: dict[str, Any]
    history: list[dict[str, Any]]
    storage_uri: str  # where Ray Train keeps the run (checkpoints, results)
    epochs_before: int = 0  # epochs the run had already trained when this call started
    trained: bool = True  # False: the run was already complete, no worker was started
    # The last attempt's workers: rank, world size and Ray node id each (from their digests).
    workers: tuple[dict[str, Any], ...] = ()


def training_contract(cfg: TrainJobConfig, dataset: PatchDataset | None) -> Any:
    """The input contract a run trains with (and its checkpoints and card carry):
    ``train.preprocess()``, plus what only the dataset knows: a multi-scale model's
    ``context_scale`` (its dataset must have the context view) and the patches' microns per
    pixel when the dataset's source records one (slide tiles)."""
    from patchray.models import get_model_info

    preprocess = cfg.train.preprocess()
    if dataset is None:
        return preprocess
    update: dict[str, Any] = {}
    mpp = dataset.manifest.source.get("microns_per_pixel")
    if preprocess.microns_per_pixel is None and isinstance(mpp, int | float) and mpp > 0:
        update["microns_per_pixel"] = float(mpp)
    if get_model_info(cfg.train.model).multiscale:
        if dataset.context_scale is None:
            raise ConfigError(
                f"train.model={cfg.train.model} takes two views (patch and context) but "
                f"{dataset.root} has only one (manifest views: {list(dataset.views) or 'none'}); "
                "build a multi-scale dataset with patchray.slides.multiscale."
                "write_multiscale_dataset, or choose a single-scale model")
        update["context_scale"] = dataset.context_scale
    return preprocess.model_copy(update=update) if update else preprocess


def loop_config(cfg: TrainJobConfig, replica_report_uri: str = "", *,
                progress_label: str = "", preprocess: Any = None) -> dict[str, Any]:
    """The plain-dict config every worker receives. With ``progress_label`` (a tuning
    trial), epoch lines carry it and go to the log file only, not the terminal.
    ``preprocess``: the contract (:func:`training_contract`; default ``train.preprocess()``)."""
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
        "preprocess": (preprocess or t.preprocess()).model_dump(mode="json"),
        "replica_report_uri": replica_report_uri,
        "progress_label": progress_label,
    }


def scaling_config(cfg: TrainJobConfig) -> Any:
    from ray.train import ScalingConfig

    t = cfg.train
    resources: dict[str, float] = {"CPU": t.cpus_per_worker}
    if t.use_gpu:
        # Ray sets CUDA_VISIBLE_DEVICES to the GPU(s) it assigned each worker; the TensorFlow
        # backend does not widen it to the node's GPUs (share_cuda_visible_devices=False).
        resources["GPU"] = t.gpus_per_worker
    return ScalingConfig(num_workers=t.num_workers, use_gpu=t.use_gpu, resources_per_worker=resources,
                         placement_strategy=t.placement_strategy)


def run_config(cfg: TrainJobConfig, *, storage_root: str, run_name: str,
               callbacks: list[Any] | None = None) -> Any:
    """Where the run lives, which checkpoints it keeps (best K by val AUC), how often it
    retries; ``callbacks``: Ray Train callbacks (Tune's report callback in a trial)."""
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
        worker_runtime_env=runtime.runtime_env(),
        callbacks=callbacks or None,
    )


def build_trainer(
    cfg: TrainJobConfig, *, dataset: PatchDataset, storage_root: str, run_name: str,
    callbacks: list[Any] | None = None, progress_label: str = "",
) -> Any:
    """A ready-to-``fit`` TensorflowTrainer over the train/val splits of ``dataset``."""
    ensure_legacy_keras_env()  # ray.train.tensorflow imports TensorFlow
    from ray.train import DataConfig
    from ray.train.tensorflow import TensorflowTrainer

    preprocess = training_contract(cfg, dataset)
    datasets = {
        "train": training_dataset(
            dataset,
            "train",
            preprocess=preprocess,
            augment=cfg.data.augment,
            augment_strength=cfg.data.augment_strength,
            weighting=cfg.data.class_weighting,
            val_holdout=cfg.data.val_holdout,
        ),
        "val": training_dataset(dataset, "val", preprocess=preprocess, augment=False,
                                val_holdout=cfg.data.val_holdout),
    }
    return TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=loop_config(cfg, storage.join(storage_root, run_name, "replicas"),
                                      progress_label=progress_label, preprocess=preprocess),
        scaling_config=scaling_config(cfg),
        datasets=datasets,
        # Only train is sharded; every worker sees all of val (rank 0 scores it).
        dataset_config=DataConfig(datasets_to_split=["train"]),
        run_config=run_config(cfg, storage_root=storage_root, run_name=run_name,
                              callbacks=callbacks),
    )


def previous_result(storage_root: str, run_name: str) -> Any | None:
    """The Ray Train ``Result`` of an earlier run with this name, or None if there is none.

    Public API only: ``Result.from_path`` restores what a trainer with the same
    ``RunConfig(name, storage_path)`` would resume from, and raises RuntimeError when the run
    folder or its checkpoint snapshot is missing (tests/unit/training/test_trainer.py fails
    if Ray changes that)."""
    from ray.train import Result

    run_uri = storage.join(storage_root, run_name)
    if not storage.exists(run_uri):
        return None
    fs, path = storage.resolve(run_uri)
    try:
        result = Result.from_path(path, storage_filesystem=fs)
    except RuntimeError:  # the folder exists but holds no checkpoint snapshot yet
        return None
    return result if result.checkpoint is not None else None


def read_workers(replicas_uri: str) -> list[dict[str, Any]]:
    """Rank, world size and Ray node id of each worker of a run's last attempt, from the
    digests every worker writes at ``replicas_uri`` (written from the worker's own node,
    so on a multi-node cluster they prove where each ran); [] when there are none."""
    if not storage.exists(replicas_uri):
        return []
    workers = []
    for uri in storage.list_files(replicas_uri, ".json"):
        digest = storage.read_json(uri)
        workers.append({k: digest.get(k) for k in ("rank", "world_size", "node_id")})
    return sorted(workers, key=lambda w: w["rank"] if w["rank"] is not None else -1)


def read_meta(checkpoint: Any) -> dict[str, Any]:
    """The ``meta.json`` of a Ray Train checkpoint (epoch, history, resumes, ...)."""
    with checkpoint.as_directory() as d:
        return json.loads((Path(d) / CHECKPOINT_META).read_text())


def run_training(
    cfg: TrainJobConfig,
    *,
    dataset: PatchDataset,
    storage_root: str,
    run_name: str,
    local_dir: str,
) -> TrainingOutcome:
    """Train (or resume, or skip a finished run); return the best checkpoint by val AUC.

    The run lives at ``<storage_root>/<run_name>``. If it has checkpoints already, training
    continues after the latest one; if that one is the last epoch, no worker is started and
    the outcome describes the finished run (so a rerun trains nothing).
    Resuming into a different network (model, model_args, input_size, mixed_precision) is a
    :class:`ConfigError`.
    """
    epochs_before, result = 0, previous_result(storage_root, run_name)
    if result is not None:
        latest = read_meta(result.checkpoint)
        mismatch = architecture_mismatch(latest, loop_config(cfg))
        if mismatch:
            raise ConfigError(
                f"run {storage.join(storage_root, run_name)} was trained with another "
                f"network ({'; '.join(mismatch)}); resume it with its own config or give "
                "this job a new name"
            )
        epochs_before = latest["epoch"] + 1
    if epochs_before >= cfg.train.epochs:
        log.info("run %s already trained %d epoch(s) (train.epochs=%d): not training again, "
                 "using its best checkpoint", run_name, epochs_before, cfg.train.epochs)
    else:
        if epochs_before:
            log.info("resuming from epoch %d/%d checkpoint of run %s: training epochs %d..%d",
                     epochs_before, cfg.train.epochs, run_name, epochs_before + 1,
                     cfg.train.epochs)
        trainer = build_trainer(cfg, dataset=dataset, storage_root=storage_root,
                                run_name=run_name)
        result = fit(trainer, dataset.root, storage.join(storage_root, run_name))
    return outcome_from_result(
        result, storage.join(storage_root, run_name), Path(local_dir),
        epochs_before=epochs_before, trained=epochs_before < cfg.train.epochs,
        workers=tuple(read_workers(storage.join(storage_root, run_name, "replicas"))),
    )


def fit(trainer: Any, data_root: str, run_uri: str) -> Any:
    """``trainer.fit()``, its failure (raised or in ``result.error``) as a PatchrayError: a
    corrupted dataset page names the dataset; anything else names the run and the log."""
    try:
        result = trainer.fit()
        error = result.error
    except PatchrayError:
        raise
    except Exception as e:  # Ray Train V2 raises TrainingFailedError wrapping the workers'
        error = e
    if error is None:
        return result
    explained = checksum_error(error, data_root)
    if explained is not None:
        raise explained from error
    last = (str(error).strip().splitlines() or [type(error).__name__])[-1]
    raise TrainingError(f"training run {run_uri} failed: {last} (the workers' tracebacks are "
                        "in the run's log file)") from error


def outcome_from_result(
    result: Any, storage_uri: str, local_dir: Path, **extra: Any
) -> TrainingOutcome:
    """Copy the best checkpoint (by val AUC, not the latest) to ``local_dir/best_checkpoint``."""
    if not result.best_checkpoints:
        raise TrainingError(f"training run {storage_uri} reported no checkpoint")
    best = result.get_best_checkpoint(metric="val_auc", mode="max")
    target = local_dir / "best_checkpoint"
    shutil.rmtree(target, ignore_errors=True)  # a rerun must not mix two checkpoints' files
    best.to_directory(str(target))
    meta = json.loads((target / CHECKPOINT_META).read_text())
    best_metrics = next(m for m in meta["history"] if m["epoch"] == meta["epoch"])
    # The latest checkpoint's history covers every epoch so far (the best one's may stop early).
    history = read_meta(result.checkpoint)["history"] if result.checkpoint else meta["history"]
    return TrainingOutcome(
        best_checkpoint_dir=str(target),
        best_metrics=best_metrics,
        history=history,
        storage_uri=storage_uri,
        **extra,
    )
