"""The per-worker training loop run by Ray Train's ``TensorflowTrainer``.

Each worker builds the model under ``MultiWorkerMirroredStrategy`` (gradients are
all-reduced across workers every step), trains one epoch at a time on its Ray Data shard,
and after each epoch rank 0 scores the full validation split and reports a checkpoint.
Everything TensorFlow is imported inside the functions: this module is imported on the
driver too, which must not pay for (or mis-configure) TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from typing import Any

import numpy as np

from patchray import storage
from patchray.evaluation.metrics import binary_metrics

CHECKPOINT_META = "meta.json"
CHECKPOINT_PREFIX = "ckpt"  # tf.train.Checkpoint files: model weights + optimizer state


def weights_digest(weights: list[np.ndarray]) -> str:
    """SHA-256 over a list of weight arrays: equal digests mean bit-identical replicas."""
    h = hashlib.sha256()
    for w in weights:
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def validation_metrics(y_true: np.ndarray, y_score: np.ndarray) -> dict[str, float]:
    """Per-epoch validation metrics at the neutral 0.5 threshold, prefixed ``val_``."""
    m = binary_metrics(y_true, y_score, threshold=0.5).to_dict()
    keep = (
        "loss auc accuracy sensitivity specificity precision f1 balanced_accuracy"
    ).split()
    return {f"val_{k}": m[k] for k in keep}


def _configure_threads(tf: Any, intra: int, inter: int) -> None:
    # Must run before TensorFlow builds its runtime context (i.e. before the strategy).
    tf.config.threading.set_intra_op_parallelism_threads(intra)
    tf.config.threading.set_inter_op_parallelism_threads(inter)


def _shard_to_tf(shard: Any, batch_size: int, size: int, tf: Any) -> Any:
    """A tf.data view of this worker's Ray Data shard, iterated afresh by each fit call."""
    spec = (
        tf.TensorSpec((None, size, size, 3), tf.float32),
        tf.TensorSpec((None,), tf.float32),
        tf.TensorSpec((None,), tf.float32),
    )

    def batches():
        for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy", prefetch_batches=2):
            yield b["x"], b["y"], b["w"]

    ds = tf.data.Dataset.from_generator(batches, output_signature=spec)
    options = tf.data.Options()
    # Ray Data already sharded the rows; TensorFlow must not shard them again.
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return ds.with_options(options)


def _predict_split(
    model: Any, shard: Any, batch_size: int, cache: dict[str, list[np.ndarray]] | None
) -> tuple[np.ndarray, np.ndarray]:
    """Score the validation split with direct model calls (no ``predict``: local forward
    passes need no collectives). With ``cache``, the decoded split is kept after the first
    epoch: re-streaming a small split each epoch costs more than scoring it."""
    if cache:
        batches = zip(cache["x"], cache["y"])
    else:
        batches = (
            (b["x"], b["y"])
            for b in shard.iter_batches(batch_size=batch_size, batch_format="numpy")
        )
    xs, ys, ps = [], [], []
    for x, y in batches:
        ps.append(np.asarray(model(x, training=False)).reshape(-1))
        ys.append(y)
        xs.append(x)
    if cache is not None and not cache:
        cache.update(x=xs, y=ys)
    return np.concatenate(ys), np.concatenate(ps)


def _end_of_epoch(
    metrics: dict[str, Any],
    rank: int,
    epochs: int,
    batch: int,
    config: dict[str, Any],
    model: Any,
    val_shard: Any,
    tf_checkpoint: Any,
    history: list[dict[str, Any]],
    val_cache: dict[str, list[np.ndarray]] | None,
) -> None:
    import ray.train

    epoch = metrics["epoch"]
    with tempfile.TemporaryDirectory() as tmp:
        # Every worker writes: reading sync-on-read variables (e.g. BatchNorm statistics)
        # is a collective. Only rank 0's copy is handed to Ray Train.
        saved = tf_checkpoint.write(os.path.join(tmp, CHECKPOINT_PREFIX))
        if rank != 0:
            ray.train.report(metrics)
            return
        t0 = time.perf_counter()
        y, p = _predict_split(model, val_shard, max(batch, 256), val_cache)
        metrics.update(validation_metrics(y, p))
        metrics["val_seconds"] = time.perf_counter() - t0
        history.append(metrics)
        meta = {
            "epoch": epoch,
            "history": history,
            "tf_checkpoint": os.path.basename(saved),
            "model": config["model"],
            "model_args": config["model_args"],
            "input_size": config["input_size"],
        }
        with open(os.path.join(tmp, CHECKPOINT_META), "w") as f:
            json.dump(meta, f, indent=2)
        print(
            f"[patchray] epoch {epoch + 1}/{epochs}  loss {metrics['loss']:.4f}  "
            f"val_loss {metrics['val_loss']:.4f}  val_auc {metrics['val_auc']:.4f}  "
            f"val_sens {metrics['val_sensitivity']:.3f}  "
            f"val_spec {metrics['val_specificity']:.3f}  "
            f"({metrics['train_seconds']:.1f}s train, {metrics['val_seconds']:.1f}s val)",
            flush=True,
        )
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train entry point; ``config`` is built by :func:`patchray.training.trainer.loop_config`."""
    from patchray.models import create_model
    from patchray.models.keras_compat import load_keras, load_tensorflow

    tf = load_tensorflow()
    keras = load_keras()
    import ray.train

    _configure_threads(tf, config["intra_op_threads"], config["inter_op_threads"])
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    tf.keras.utils.set_random_seed(config["seed"])  # same initial weights on every worker

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = create_model(
            config["model"], input_size=config["input_size"], **config["model_args"]
        )
        optimizer = keras.optimizers.Adam(learning_rate=config["learning_rate"])
        model.compile(optimizer=optimizer, loss=keras.losses.BinaryCrossentropy())
    tf_checkpoint = tf.train.Checkpoint(model=model, optimizer=optimizer)

    start_epoch, history = 0, []
    resume_from = ray.train.get_checkpoint()
    if resume_from is not None:
        with resume_from.as_directory() as d:
            meta = json.loads(open(os.path.join(d, CHECKPOINT_META)).read())
            tf_checkpoint.restore(os.path.join(d, meta["tf_checkpoint"])).expect_partial()
        start_epoch, history = meta["epoch"] + 1, meta["history"]
        if rank == 0:
            print(f"[patchray] resuming from epoch {meta['epoch'] + 1} checkpoint", flush=True)

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    epochs, batch = config["epochs"], config["batch_size"]
    val_cache: dict[str, list[np.ndarray]] | None = {} if config["cache_val"] else None

    class ReportEachEpoch(keras.callbacks.Callback):
        """Checkpoint, validate (rank 0) and report to Ray Train at the end of every epoch."""

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            train_seconds = time.perf_counter() - self.t0
            metrics: dict[str, Any] = {
                "epoch": epoch,
                "loss": float((logs or {}).get("loss", float("nan"))),
                "train_seconds": train_seconds,
                "optimizer_steps": int(optimizer.iterations.numpy()),
            }
            _end_of_epoch(metrics, rank, epochs, batch, config, model, val_shard,
                          tf_checkpoint, history, val_cache)

    if start_epoch < epochs:
        # One fit call for all epochs: from_generator re-iterates the Ray Data shard each
        # epoch, and the distributed train step is traced once, not once per epoch.
        model.fit(
            _shard_to_tf(train_shard, batch, config["input_size"], tf),
            epochs=epochs,
            initial_epoch=start_epoch,
            callbacks=[ReportEachEpoch()],
            verbose=0,
        )

    if config.get("replica_report_uri"):
        # Proof that gradients were all-reduced: every replica ends with the same weights.
        digest = weights_digest([v.numpy() for v in model.trainable_variables])
        storage.write_json(
            storage.join(config["replica_report_uri"], f"rank{rank}.json"),
            {"rank": rank, "world_size": world, "trainable_weights_sha256": digest},
        )
