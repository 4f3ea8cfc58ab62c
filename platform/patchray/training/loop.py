"""The per-worker training loop run by Ray Train's ``TensorflowTrainer``.

Each worker builds the model under ``MultiWorkerMirroredStrategy`` (gradients are
all-reduced across workers every step), trains one epoch at a time on its Ray Data shard,
and after each epoch rank 0 scores the full validation split and reports a checkpoint.

A worker group that Ray Train restarts (a worker died, or the driver was restarted with the
same run name) gets the run's latest checkpoint from ``ray.train.get_checkpoint()`` and
continues from the epoch after it. The checkpoint's ``meta.json`` carries the history of
every epoch so far and an ``attempt`` counter, so a resumed run is visible in its outputs.

Everything TensorFlow is imported inside the functions: this module is imported on the
driver too, which must not pay for (or mis-configure) TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from patchray import storage
from patchray.evaluation.metrics import binary_metrics
from patchray.inference.preprocess import Preprocess
from patchray.logs import worker_progress
from patchray.training.metrics import TrainingMetrics

CHECKPOINT_META = "meta.json"
CHECKPOINT_PREFIX = "ckpt"  # tf.train.Checkpoint files: model weights + optimizer state
#: Checkpoint meta keys that fix the network; a checkpoint only resumes into the same ones.
ARCHITECTURE_KEYS = ("model", "model_args", "input_size", "mixed_precision")


def weights_digest(weights: list[np.ndarray]) -> str:
    """SHA-256 over a list of weight arrays: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def validation_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Per-epoch validation metrics at the neutral 0.5 threshold, prefixed ``val_``."""
    m = binary_metrics(y_true, y_score, threshold=0.5).to_dict()
    keep = ["loss", "auc", "accuracy", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy"]
    return {f"val_{k}": m[k] for k in keep}


@dataclass
class Progress:
    """Where a run stands: what the latest checkpoint recorded, plus this attempt."""

    start_epoch: int = 0  # first epoch this attempt trains (0-based)
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per epoch done
    attempt: int = 1  # 1 + the number of times training resumed from a checkpoint
    resumes: list[dict[str, int]] = field(default_factory=list)

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        """The progress of an attempt that resumes from the checkpoint described by ``meta``."""
        attempt = meta.get("attempt", 1) + 1
        return cls(
            start_epoch=meta["epoch"] + 1,
            history=list(meta["history"]),
            attempt=attempt,
            resumes=[*meta.get("resumes", []), {"attempt": attempt, "from_epoch": meta["epoch"]}],
        )

    def meta(self, epoch: int, tf_checkpoint: str, config: dict[str, Any],
             weights_sha256: str) -> dict[str, Any]:
        """The ``meta.json`` of the checkpoint written after ``epoch``."""
        return {
            "epoch": epoch,
            "weights_sha256": weights_sha256,  # of model.get_weights() at this checkpoint
            "epochs": config["epochs"],
            "history": self.history,
            "attempt": self.attempt,
            "resumes": self.resumes,
            "resumed_from_epoch": self.resumes[-1]["from_epoch"] if self.resumes else None,
            "tf_checkpoint": tf_checkpoint,
            "preprocess": config["preprocess"],  # the input contract export writes out
            **{k: config[k] for k in ARCHITECTURE_KEYS},
        }


def _configure_devices(tf: Any, config: dict[str, Any]) -> None:
    # Must run before TensorFlow builds its runtime context (i.e. before the strategy).
    tf.config.threading.set_intra_op_parallelism_threads(config["intra_op_threads"])
    tf.config.threading.set_inter_op_parallelism_threads(config["inter_op_threads"])
    # Ray sets CUDA_VISIBLE_DEVICES to this worker's GPU(s) (the TensorFlow backend does not
    # share devices across workers), so TensorFlow only sees what Ray assigned. Memory growth
    # stops TensorFlow from reserving the whole card up front, which matters when workers
    # share a GPU (gpus_per_worker < 1).
    for gpu in tf.config.list_physical_devices("GPU"):
        tf.config.experimental.set_memory_growth(gpu, True)


def _build_model(config: dict[str, Any], keras: Any, strategy: Any) -> Any:
    """The compiled model, its variables mirrored by ``strategy``."""
    from patchray.models import create_model

    if config["mixed_precision"]:
        # float16 compute, float32 variables; the registry keeps the output layer float32 and
        # compile() wraps the optimizer in a LossScaleOptimizer.
        keras.mixed_precision.set_global_policy("mixed_float16")
    with strategy.scope():
        model = create_model(
            config["model"], input_size=config["input_size"], **config["model_args"]
        )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate=config["learning_rate"]),
            loss=keras.losses.BinaryCrossentropy(),
        )
    return model


def checkpoint_extras(model: Any) -> dict[str, Any]:
    """Training state beyond the model and its optimizer that a checkpoint must hold to
    resume: an SGAN's generator optimizer (the generator itself is part of the model)."""
    extra = getattr(model, "generator_optimizer", None)
    return {"generator_optimizer": extra} if extra is not None else {}


def architecture_mismatch(meta: dict[str, Any], config: dict[str, Any]) -> list[str]:
    """The architecture keys on which a checkpoint's ``meta`` and a loop ``config`` differ.

    Restoring with ``expect_partial`` would silently skip weights that do not match, so a
    checkpoint must only ever resume into the network it was written from.
    """
    return [
        f"{k}: checkpoint has {meta.get(k, False)!r}, config has {config[k]!r}"
        for k in ARCHITECTURE_KEYS
        if meta.get(k, False) != config[k]  # mixed_precision is absent from older checkpoints
    ]


def _restore(model: Any, tf_checkpoint: Any, checkpoint: Any, config: dict[str, Any],
             rank: int) -> Progress:
    """Load ``checkpoint`` (from ``ray.train.get_checkpoint``) into the model; or start fresh.

    The digest of the weights right after restoring is recorded with the resume, so a resumed
    run shows that it continued from exactly the checkpoint's weights (its ``weights_sha256``).
    """
    if checkpoint is None:
        return Progress()
    with checkpoint.as_directory() as d:
        with open(os.path.join(d, CHECKPOINT_META)) as f:
            meta = json.load(f)
        mismatch = architecture_mismatch(meta, config)
        if mismatch:
            raise ValueError(f"cannot resume from checkpoint {checkpoint.path}: "
                             + "; ".join(mismatch))
        tf_checkpoint.restore(os.path.join(d, meta["tf_checkpoint"])).expect_partial()
    progress = Progress.from_meta(meta)
    # Every rank: reading sync-on-read variables (BatchNorm statistics) is a collective.
    progress.resumes[-1]["restored_weights_sha256"] = weights_digest(model.get_weights())
    if rank == 0:
        _say(config, f"resuming from epoch {progress.start_epoch}/{config['epochs']} "
                     f"checkpoint (attempt {progress.attempt})")
    return progress


def _say(config: dict[str, Any], message: str) -> None:
    """A progress line: to the terminal (and log); a tuning trial's only to the log file,
    labelled (the tuner prints one line per decision instead)."""
    label = config.get("progress_label")
    if label:
        print(f"{label}: {message}", flush=True)
    else:
        worker_progress(message)


def checkpoint_preprocess(meta: dict[str, Any]) -> Preprocess:
    """The input contract a checkpoint was trained with (older ones: the default one)."""
    if meta.get("preprocess"):
        return Preprocess.model_validate(meta["preprocess"])
    return Preprocess(size=meta["input_size"])


def batch_inputs(batch: dict[str, np.ndarray], preprocess: Preprocess) -> Any:
    """A prepared batch (``x``, and ``context`` for a multi-scale contract) -> what the
    Keras model is called with: one float32 array, or ``{"patch": ..., "context": ...}``.

    The batch comes from :func:`patchray.data.pipeline.training_dataset` (train and val
    alike), whose Ray Data stage already applied the contract's stain normalisation before
    augmenting: scaling here must not normalise again."""
    if preprocess.multiscale and "context" not in batch:
        raise ValueError("a multi-scale model needs the context view: the batch has no "
                         f"'context' (keys {sorted(batch)}); is the dataset multi-scale?")
    return preprocess.inputs(batch["x"], batch.get("context") if preprocess.multiscale else None,
                             stain_normalised=True)


def _shard_to_tf(shard: Any, batch_size: int, preprocess: Preprocess, tf: Any) -> Any:
    """A tf.data view of this worker's Ray Data shard, iterated afresh by each fit call."""
    size = preprocess.size
    view = tf.TensorSpec((None, size, size, 3), tf.float32)
    spec = (
        {name: view for name in preprocess.input_names} if preprocess.multiscale else view,
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None,), tf.float32),
    )

    def batches():
        for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            yield batch_inputs(b, preprocess), b["y"], b["w"]

    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    options = tf.data.Options()
    # Ray Data already sharded the rows; TensorFlow must not shard them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _predict_split(
    model: Any, shard: Any, batch_size: int, cache: dict[str, list[np.ndarray]] | None,
    preprocess: Preprocess,
) -> tuple[np.ndarray, np.ndarray]:
    """Score the validation split with direct model calls (no ``predict``: local forward
    passes need no collectives). With ``cache``, the decoded split is kept after the first
    epoch: re-streaming a small split each epoch costs more than scoring it."""
    if cache:
        batches = ({"x": x, "y": y, **({"context": c} if c is not None else {})}
                   for x, y, c in zip(cache["x"], cache["y"], cache["context"]))
    else:
        batches = shard.iter_batches(batch_size=batch_size, batch_format="numpy")
    xs, ys, cs, ps = [], [], [], []
    for b in batches:
        ps.append(np.asarray(model(batch_inputs(b, preprocess), training=False)).reshape(-1))
        ys.append(b["y"])
        xs.append(b["x"])
        cs.append(b.get("context") if preprocess.multiscale else None)
    if cache is not None and not cache:
        cache.update(x=xs, y=ys, context=cs)
    return np.concatenate(ys), np.concatenate(ps)


def _log_epoch(config: dict[str, Any], metrics: dict[str, Any], epochs: int) -> None:
    _say(
        config,
        f"epoch {metrics['epoch'] + 1}/{epochs}  loss {metrics['loss']:.4f}  "
        f"val_loss {metrics['val_loss']:.4f}  val_auc {metrics['val_auc']:.4f}  "
        f"val_sens {metrics['val_sensitivity']:.3f}  "
        f"val_spec {metrics['val_specificity']:.3f}  "
        f"({metrics['train_seconds']:.1f}s train, {metrics['val_seconds']:.1f}s val)"
    )


class _EpochReporter:
    """Checkpoint, validate (rank 0) and report to Ray Train at the end of every epoch."""

    def __init__(self, config: dict[str, Any], rank: int, model: Any, tf_checkpoint: Any,
                 val_shard: Any, progress: Progress) -> None:
        self.config, self.rank, self.model = config, rank, model
        self.tf_checkpoint, self.val_shard, self.progress = tf_checkpoint, val_shard, progress
        self.preprocess = Preprocess.model_validate(config["preprocess"])
        self.val_cache: dict[str, list[np.ndarray]] | None = {} if config["cache_val"] else None
        self._local_model: Any = None
        self.telemetry: TrainingMetrics | None = None
        if rank == 0:
            from patchray.models import create_model

            self.telemetry = TrainingMetrics.for_worker(config, progress.attempt)
            self.telemetry.started(progress.start_epoch)

            # Built now, outside any strategy scope: inside fit (where callbacks run)
            # variable creation would be mirrored, i.e. a collective the others never join.
            self._local_model = create_model(
                config["model"], input_size=config["input_size"], **config["model_args"]
            )

    def _eval_model(self, weights: list[np.ndarray]) -> Any:
        """The non-distributed copy of the model, holding ``weights``."""
        self._local_model.set_weights(weights)
        return self._local_model

    def __call__(self, metrics: dict[str, Any]) -> None:
        import ray.train

        with tempfile.TemporaryDirectory() as tmp:
            # Every worker writes: reading sync-on-read variables (e.g. BatchNorm statistics)
            # is a collective. Only rank 0's copy is handed to Ray Train.
            saved = self.tf_checkpoint.write(os.path.join(tmp, CHECKPOINT_PREFIX))
            # Also a collective on every worker: BatchNorm moving statistics are sync-on-read,
            # so calling the distributed model on rank 0 alone would all-reduce them with
            # workers that are not listening (deadlock). Rank 0 scores a local copy instead.
            weights = self.model.get_weights()
            if self.rank != 0:
                ray.train.report(metrics)
                return
            t0 = time.perf_counter()
            batch = max(self.config["batch_size"], 256)
            y, p = _predict_split(self._eval_model(weights), self.val_shard, batch,
                                  self.val_cache, self.preprocess)
            metrics.update(validation_metrics(y, p))
            metrics["val_seconds"] = time.perf_counter() - t0
            metrics["attempt"] = self.progress.attempt
            history = self.progress.history
            steps_before = history[-1]["optimizer_steps"] if history else 0
            history.append(metrics)
            meta = self.progress.meta(metrics["epoch"], os.path.basename(saved), self.config,
                                      weights_digest(weights))
            with open(os.path.join(tmp, CHECKPOINT_META), "w") as f:
                json.dump(meta, f, indent=2)
            _log_epoch(self.config, metrics, self.config["epochs"])
            self.telemetry.epoch_done(metrics, steps_before)  # type: ignore[union-attr]
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def _keras_callback(keras: Any, report: _EpochReporter, optimizer: Any) -> Any:
    class ReportEachEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            report({
                "epoch": epoch,
                # Absolute progress for schedulers: Tune's training_iteration restarts at 1
                # whenever a paused trial resumes, this continues from the checkpoint.
                "epochs_done": epoch + 1,
                "loss": float((logs or {}).get("loss", float("nan"))),
                "train_seconds": time.perf_counter() - self.t0,
                "finished_at": time.time(),  # wall clock: orders epochs across trials
                "optimizer_steps": int(optimizer.iterations.numpy()),
            })

    return ReportEachEpoch()


def _write_replica_digest(uri: str, model: Any, rank: int, world: int) -> None:
    # Proof that gradients were all-reduced: every replica ends with the same weights; and
    # of where each worker ran (the run's report lists the nodes).
    import ray

    digest = weights_digest([v.numpy() for v in model.trainable_variables])
    storage.write_json(
        storage.join(uri, f"rank{rank}.json"),
        {"rank": rank, "world_size": world, "trainable_weights_sha256": digest,
         "node_id": ray.get_runtime_context().get_node_id()},
    )


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is built by :func:`patchray.training.trainer.loop_config`."""
    from patchray.models.keras_compat import load_keras, load_tensorflow

    tf = load_tensorflow()
    keras = load_keras()
    import ray.train

    _configure_devices(tf, config)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tf.keras.utils.set_random_seed(config["seed"])  # same initial weights on every worker

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    model = _build_model(config, keras, strategy)
    # model.optimizer, not the Adam passed to compile: under mixed precision it is the
    # LossScaleOptimizer wrapping it, whose loss scale must be checkpointed too.
    tf_checkpoint = tf.train.Checkpoint(model=model, optimizer=model.optimizer,
                                        **checkpoint_extras(model))
    progress = _restore(model, tf_checkpoint, ray.train.get_checkpoint(), config, rank)

    epochs, batch = config["epochs"], config["batch_size"]
    if progress.start_epoch < epochs:
        reporter = _EpochReporter(config, rank, model, tf_checkpoint,
                                  ray.train.get_dataset_shard("val"), progress)
        # One fit call for all epochs: from_generator re-iterates the Ray Data shard each
        # epoch, and the distributed train step is traced once, not once per epoch.
        model.fit(
            # MultiWorkerMirroredStrategy reads each worker's dataset batch as the GLOBAL batch
            # and splits it over all replicas: feed world * batch rows so every replica steps
            # on train.batch_size rows, as the config promises.
            _shard_to_tf(ray.train.get_dataset_shard("train"), batch * world,
                         Preprocess.model_validate(config["preprocess"]), tf),
            epochs=epochs,
            initial_epoch=progress.start_epoch,
            callbacks=[_keras_callback(keras, reporter, model.optimizer)],
            verbose=0,
        )

    if config.get("replica_report_uri"):
        _write_replica_digest(config["replica_report_uri"], model, rank, world)
