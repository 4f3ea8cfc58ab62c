"""``training``: how close patchray's distributed training gets to plain Keras on the same cores.

*patchray*: :func:`patchray.training.trainer.build_trainer` + ``fit`` (Ray Data streaming PNG
decode + augmentation, Ray Train with 2 workers of 1 CPU and 1 thread each, the demo's
settings: 4 logical CPUs, ``train.batch_size`` 32 per worker, so 64 patches per optimizer
step). Images/s per epoch come from the ``train_seconds`` and ``optimizer_steps`` the training
loop reports; epoch 1 (tracing, Ray Data start-up) is left out. Variants: the PNG and the raw
uint8 dataset layout (``patchray ingest --encoding raw``), one worker with 2 threads instead of
two with one (same cores, no all-reduce), and without augmentation (full runs).
*plain Keras*: ``tf_keras`` ``fit`` on the same train split already decoded in memory, same
model, same global batch per step, one process with 2 intra-op threads in a 2-CPU Ray actor:
the same 2 cores, no input pipeline, no all-reduce. It runs right before each variant, and
each efficiency is the ratio of that adjacent pair.

Efficiency = patchray images/s / plain Keras images/s (goal >= 0.85).

    python -m patchray.benchmarks training --out runs/bench [--size 50 --size 96] [--quick]
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions, Log, bar_chart, call_in_actor, format_table, machine, say,
    start_ray, synthetic_dataset, write_results,
)

NAME = "training"
MODEL = "cnn6"
WORKERS = 2
WORKER_BATCH = 32
GLOBAL_BATCH = WORKERS * WORKER_BATCH


@dataclass(frozen=True)
class Variant:
    """One patchray configuration, always at GLOBAL_BATCH patches per optimizer step."""

    workers: int = WORKERS
    threads: int = 1  # intra-op threads (and Ray CPUs) per worker
    augment: bool = True
    layout: str = "png"

    @property
    def label(self) -> str:
        aug = "" if self.augment else " no-aug"
        return f"{self.layout} {self.workers}x{self.threads}t{aug}"


def epoch_rates(history: list[dict[str, Any]], images_per_epoch: int,
                global_batch: int) -> list[dict[str, float]]:
    """Images/s of every epoch from the loop's metrics (``optimizer_steps`` is cumulative)."""
    out, before = [], 0
    for h in history:
        steps = int(h["optimizer_steps"]) - before
        before = int(h["optimizer_steps"])
        images = min(steps * global_batch, images_per_epoch)
        out.append({"epoch": int(h["epoch"]) + 1, "steps": steps, "images": images,
                    "seconds": float(h["train_seconds"]),
                    "images_per_s": images / float(h["train_seconds"])})
    return out


def steady_rate(epochs: list[dict[str, float]]) -> float:
    """Images/s over every epoch but the first (which includes tracing and start-up)."""
    rest = epochs[1:] or epochs
    return sum(e["images"] for e in rest) / sum(e["seconds"] for e in rest)


def patchray_training(dataset: Any, size: int, *, epochs: int,
                      storage_root: Path, augment: bool = True,
                      batch_size: int = WORKER_BATCH, model: str = MODEL,
                      workers: int = WORKERS, threads: int = 1,
                      log: Log = say) -> dict[str, Any]:
    """Train with Ray Train as ``patchray train`` does; images/s per epoch.

    ``batch_size`` is ``train.batch_size``, per worker: one optimizer step takes
    ``batch_size * workers`` rows. Each worker reserves ``threads`` Ray CPUs and runs
    ``threads`` intra-op threads."""
    from patchray.config import load_config
    from patchray.training.loop import CHECKPOINT_META
    from patchray.training.trainer import build_trainer

    cfg = load_config(overrides=[
        f"train.model={model}", f"train.input_size={size}", f"train.epochs={epochs}",
        f"train.batch_size={batch_size}", f"train.num_workers={workers}",
        f"train.cpus_per_worker={threads}", f"train.intra_op_threads={threads}",
        f"data.augment={str(augment).lower()}", "train.keep_checkpoints=1",
    ])
    run_name = (f"{model}-{size}px-{workers}x{batch_size}-{'aug' if augment else 'noaug'}-"
                f"{time.strftime('%H%M%S')}")
    trainer = build_trainer(cfg, dataset=dataset,
                            storage_root=str(storage_root.resolve()), run_name=run_name)
    t0 = time.perf_counter()
    result = trainer.fit()
    wall = time.perf_counter() - t0
    if result.error:
        raise result.error
    with result.checkpoint.as_directory() as d:
        history = json.loads((Path(d) / CHECKPOINT_META).read_text())["history"]
    shutil.rmtree(storage_root / run_name, ignore_errors=True)  # checkpoints: not needed
    rows = dataset.rows("train")
    per_epoch = epoch_rates(history, rows - rows % workers, batch_size * workers)
    log(f"  patchray ({workers} worker(s) x {threads} thread(s), {batch_size} per worker, "
        f"{'augment' if augment else 'no augment'}): "
        f"{[round(e['images_per_s']) for e in per_epoch]} images/s per epoch, "
        f"{[e['steps'] for e in per_epoch]} steps ({wall:.0f}s)")
    return {"epochs": per_epoch, "images_per_s": steady_rate(per_epoch), "wall_seconds": wall,
            "global_batch_per_step": batch_size * workers,
            "steps_if_global_batch_were_workers_x_batch": -(-(rows // workers) // batch_size)}


def keras_fit_rate(x: np.ndarray, y: np.ndarray, w: np.ndarray, *, model: str, size: int,
                   global_batch: int, epochs: int, threads: int | None = 2) -> dict[str, Any]:
    """Plain ``tf_keras`` ``fit`` on in-memory arrays; images/s per epoch.

    ``threads`` must be set before TensorFlow starts (a fresh process); ``None`` keeps them.
    """
    from patchray.models import create_model
    from patchray.models.keras_compat import load_keras, load_tensorflow

    tf = load_tensorflow()
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras = load_keras()
    keras.utils.set_random_seed(0)
    net = create_model(model, input_size=size)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy())
    seconds: list[float] = []

    class Timer(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            seconds.append(time.perf_counter() - self.t0)

    net.fit(x, y, sample_weight=w, batch_size=global_batch, epochs=epochs, shuffle=True,
            verbose=0, callbacks=[Timer()])
    n = len(x)
    per_epoch = [{"epoch": i + 1, "images": n, "seconds": s, "images_per_s": n / s}
                 for i, s in enumerate(seconds)]
    return {"epochs": per_epoch, "images_per_s": steady_rate(per_epoch)}


def decoded_split(dataset: Any, split: str, size: int) -> tuple[np.ndarray, ...]:
    """The whole split decoded in memory: model input x, y, balanced sample weights."""
    from patchray.data.transforms import class_weights
    from patchray.inference.preprocess import Preprocess

    rows = dataset.sample_rows(split, dataset.rows(split))
    pre = Preprocess(size=size)
    x = pre.to_input(pre.rows(rows, encoding=dataset.encoding))
    y = np.array([r["label"] for r in rows], np.float32)
    weights = class_weights(dataset.label_counts(split), "balanced")
    return x, y, np.where(y >= 0.5, weights[1], weights[0]).astype(np.float32)


def _keras_baselines(dataset: Any, size: int, model: str, epochs: int,
                     global_batches: tuple[int, ...]) -> dict[int, dict[str, Any]]:
    x, y, w = decoded_split(dataset, "train", size)
    # threads only on the first call: TensorFlow's pools are fixed once it has started.
    return {b: keras_fit_rate(x, y, w, model=model, size=size, global_batch=b, epochs=epochs,
                              threads=2 if i == 0 else None)
            for i, b in enumerate(global_batches)}


def keras_baselines(dataset: Any, size: int, *, epochs: int, global_batches: tuple[int, ...],
                    model: str = MODEL, log: Log = say) -> dict[int, dict[str, Any]]:
    """:func:`keras_fit_rate` per global batch in one fresh 2-CPU Ray actor (the 2 cores
    the training workers share)."""
    out = call_in_actor(_keras_baselines, dataset, size, model, epochs, global_batches,
                        num_cpus=2)
    for b, r in out.items():
        log(f"  plain keras, batch {b}: {[round(e['images_per_s']) for e in r['epochs']]} "
            "images/s per epoch")
    return out


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    patients, per_patient, epochs = (6, 120, 3) if opts.quick else (12, 250, 4)
    # Full runs also show what augmentation costs. The raw layout holds the same pixels, so
    # both datasets train on the same data.
    variants = [Variant(), Variant(layout="raw"), Variant(workers=1, threads=2)]
    variants += [] if opts.quick else [Variant(augment=False)]
    rows, details = [], []
    for size in opts.sizes:
        roots = {}
        for encoding in sorted({v.layout for v in variants}):
            roots[encoding] = synthetic_dataset(
                opts.out / "data", size, patients=patients, per_patient=per_patient,
                encoding=encoding, log=log)
        root = roots["png"]
        log(f"training {MODEL} {size}x{size}: {root.rows('train')} train "
            f"patches, {epochs} epochs")
        start_ray(num_cpus=4, object_store_mb=1024)
        try:
            for v in variants:
                # A baseline right before each variant: this machine's speed drifts by 1.5x
                # within minutes, so only adjacent runs make a ratio.
                base = keras_baselines(root, size, epochs=epochs, log=log,
                                       global_batches=(GLOBAL_BATCH,))[GLOBAL_BATCH]
                ours = patchray_training(roots[v.layout], size, epochs=epochs,
                                         augment=v.augment, batch_size=GLOBAL_BATCH // v.workers,
                                         workers=v.workers, threads=v.threads,
                                         storage_root=opts.out / "train-runs", log=log)
                rows.append({"size": size, "model": MODEL, "variant": v.label,
                             "global_batch": GLOBAL_BATCH,
                             "patchray_images_per_s": ours["images_per_s"],
                             "keras_images_per_s": base["images_per_s"],
                             "efficiency": ours["images_per_s"] / base["images_per_s"]})
                details.append({"size": size, "global_batch": GLOBAL_BATCH, **asdict(v),
                                "patchray": ours, "keras": base})
        finally:
            ray.shutdown()
    print(format_table(rows, ["size", "model", "variant", "global_batch",
                              "patchray_images_per_s",
                              "keras_images_per_s", "efficiency"]), flush=True)
    log("efficiency = patchray / plain keras images/s on the same 2 cores (goal >= 0.85)")
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{r['size']}px {r['variant']}":
         {"patchray (Ray Data + Ray Train)": r["patchray_images_per_s"],
          "plain keras fit (in memory)": r["keras_images_per_s"]} for r in rows},
        title=f"{MODEL} training images/s on 2 cores", ylabel="images/s",
    )
    payload = {"benchmark": NAME, "quick": opts.quick, "machine": machine(), "model": MODEL,
               "workers": WORKERS, "worker_batch": WORKER_BATCH, "rows": rows,
               "details": details, "chart": chart.name}
    path = write_results(opts.out, NAME, payload)
    log(f"wrote {path} and {chart}")
    return payload
