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


def training_contract(cfg: TrainJobConfig, dataset: PatchDataset | None, *,
                      resume_meta: dict[str, Any] | None = None) -> Any:
    """The input contract a run trains with (and its checkpoints and card carry):
    ``train.preprocess()``, plus what only the dataset knows: a multi-scale model's
    ``context_scale`` (its dataset must have the context view), the patches' microns per
    pixel when the dataset's source records one (slide tiles), and the stain normalisation
    fitted on ``data.stain.reference`` (``data.stain.method`` not ``none``).

    ``resume_meta``: the meta of the checkpoint a run resumes from; its fitted stain is
    reused as it is (a refit with the same seed is identical anyway, but the checkpoint's
    is what the weights were trained on), and a different ``data.stain.method`` is refused."""
    from patchray.models import get_model_info

    preprocess = cfg.train.preprocess()
    if dataset is None:
        return preprocess
    update: dict[str, Any] = {}
    stain = _resumed_stain(cfg, resume_meta)
    if stain is None and cfg.data.stain.method != "none":
        stain = fit_stain(cfg, dataset, preprocess)
    if stain is not None:
        update["stain"] = stain
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


def semi_supervised(cfg: TrainJobConfig) -> bool:
    """Whether ``train.model`` also trains on the dataset's unlabelled split."""
    from patchray.models import get_model_info

    return get_model_info(cfg.train.model).semi_supervised


def _resumed_stain(cfg: TrainJobConfig, meta: dict[str, Any] | None) -> Any:
    if not meta:
        return None
    saved = (meta.get("preprocess") or {}).get("stain")
    method = saved["method"] if saved else "none"
    if method != cfg.data.stain.method:
        raise ConfigError(
            f"this run's checkpoints were trained with stain normalisation {method!r}, the "
            f"config says data.stain.method={cfg.data.stain.method!r}; resume it with its "
            "own config or give this job a new name")
    if saved is None:
        return None
    from patchray.inference.preprocess import StainNormalisation

    return StainNormalisation.model_validate(saved)


def fit_stain(cfg: TrainJobConfig, dataset: PatchDataset, preprocess: Any) -> Any:
    """Fit ``data.stain`` on its reference: ``reference_patches`` patches of the train
    split sampled by ``seed`` (``reference: train``), or local image(s)."""
    from patchray.inference.preprocess import StainNormalisation

    s = cfg.data.stain
    if s.reference == "train":
        pixels = sample_split_pixels(dataset, "train", preprocess, s.reference_patches,
                                     seed=s.seed, val_holdout=cfg.data.val_holdout)
        fitted_on = (f"{len(pixels)} patches sampled from {dataset.root} train (seed "
                     f"{s.seed}, dataset content {dataset.content_sha256[:12]})")
    else:
        pixels = reference_image_pixels(s.reference, preprocess, s.reference_patches)
        fitted_on = f"{len(pixels)} patch image(s) from {s.reference}"
    try:
        return StainNormalisation.fit(s.method, pixels, fitted_on=fitted_on)
    except ValueError as e:
        raise ConfigError(f"data.stain (method {s.method}, reference {s.reference}): {e}"
                          ) from None


def sample_split_pixels(dataset: PatchDataset, split: str, preprocess: Any, n: int, *,
                        seed: int, val_holdout: float = 0.0) -> Any:
    """``n`` patches of ``split`` drawn without replacement by ``seed`` (uint8, decoded and
    padded by ``preprocess``), read straight from the split's Parquet files on the driver:
    the row counts come from the files' footers, so only the chosen rows' files are read."""
    import numpy as np
    import pyarrow.parquet as pq

    from patchray.data.manifest import in_holdout
    from patchray.data.transforms import decode_patches

    stored, held_out = dataset.resolve(split, val_holdout)
    fs, paths = dataset.split_files(stored)
    eligible = []  # per file: the row numbers a sample may take
    for path in paths:
        if held_out is None:
            eligible.append(np.arange(pq.ParquetFile(path, filesystem=fs).metadata.num_rows))
        else:
            sha = pq.read_table(path, filesystem=fs, columns=["sha256"])["sha256"].to_pylist()
            eligible.append(np.flatnonzero(in_holdout(sha, val_holdout) == held_out))
    offsets = np.cumsum([0] + [len(e) for e in eligible])
    total = int(offsets[-1])
    if total == 0:
        raise ConfigError(f"{dataset.root}: split {split!r} has no rows to fit data.stain on")
    picks = np.sort(np.random.default_rng(seed).choice(total, size=min(n, total),
                                                       replace=False))
    columns = ["image"] + (["height", "width"] if dataset.encoding == "raw" else [])
    parts = []
    for i, path in enumerate(paths):
        local = picks[(picks >= offsets[i]) & (picks < offsets[i + 1])] - offsets[i]
        if local.size == 0:
            continue
        table = pq.read_table(path, filesystem=fs, columns=columns).take(eligible[i][local])
        parts.append(decode_patches(
            table["image"].to_pylist(), preprocess.size, encoding=dataset.encoding,
            heights=table["height"].to_pylist() if "height" in columns else None,
            widths=table["width"].to_pylist() if "width" in columns else None,
            pad_value=preprocess.pad_value))
    return np.concatenate(parts)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


def reference_image_pixels(reference: str, preprocess: Any, limit: int) -> Any:
    """A stain reference given as a local image (one patch, its native size) or a folder of
    patch images (the first ``limit`` by name, fitted to the contract's size)."""
    import numpy as np

    from patchray.data.records import decode_image

    path = Path(reference)
    if path.is_file():
        return decode_image(path.read_bytes(), source=str(path))[None]
    if not path.is_dir():
        raise ConfigError(f"data.stain.reference={reference!r}: not 'train' and no such local "
                          "image file or folder")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:limit]
    if not files:
        raise ConfigError(f"data.stain.reference={reference!r}: the folder has no "
                          f"{'/'.join(IMAGE_SUFFIXES)} images")
    return np.stack([preprocess.decode(p.read_bytes(), source=str(p)) for p in files])


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
    resume_meta: dict[str, Any] | None = None,
) -> Any:
    """A ready-to-``fit`` TensorflowTrainer over the train/val splits of ``dataset``.
    ``resume_meta``: the meta of the checkpoint it resumes from (:func:`training_contract`)."""
    ensure_legacy_keras_env()  # ray.train.tensorflow imports TensorFlow
    from ray.train import DataConfig
    from ray.train.tensorflow import TensorflowTrainer

    preprocess = training_contract(cfg, dataset, resume_meta=resume_meta)
    datasets = {
        "train": training_dataset(
            dataset,
            "train",
            preprocess=preprocess,
            augment=cfg.data.augment,
            augment_strength=cfg.data.augment_strength,
            stain_augment=cfg.data.stain_augment,
            weighting=cfg.data.class_weighting,
            val_holdout=cfg.data.val_holdout,
            semi_supervised=semi_supervised(cfg),  # + the unlabelled split (sgan_* models)
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
    :class:`ConfigError`, and so is resuming with another ``data.stain.method``; a resumed
    run trains on the stain its checkpoint was fitted with (:func:`training_contract`).
    """
    epochs_before, result = 0, previous_result(storage_root, run_name)
    latest: dict[str, Any] | None = None
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
                                run_name=run_name, resume_meta=latest)
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
