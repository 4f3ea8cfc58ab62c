"""``reader``: can Ray Data feed a training worker faster than the worker trains?

*Reader*: the real pipeline (:func:`patchray.data.pipeline.training_dataset`, PNG decode +
augmentation) on a synthetic dataset, split with ``streaming_split(2, equal=True)`` and
iterated by 2 Ray actors of 1 CPU each, as the 2 training workers iterate their shards
(``iter_batches(64, prefetch_batches=2)``), on a local Ray with 4 logical CPUs like the demo.
*Consumer*: train steps/s x batch of ``cnn2`` and ``cnn6`` on in-memory tensors in a 1-CPU
Ray actor with ``intra_op_threads=1``: the per-worker budget of real training, without the
all-reduce (so the consumer rate is an upper bound and the ratio errs low).

Ratio = images/s one worker's reader delivers / images/s one worker trains; > 1 means the
reader is not the bottleneck. Both of Ray Data's Parquet readers are measured: ``v2`` (Ray
2.60's default) spends seconds per epoch listing files before the first batch. The reader is
measured while no training runs: on a 2-core machine training and decoding share the cores,
which the ``training`` benchmark measures.

    python -m patchray.benchmarks reader --out runs/bench [--size 50 --size 96] [--quick]
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    PARQUET_READERS, BenchOptions, FreshProcess, Log, bar_chart, call_in_actor, format_table,
    machine, say, start_ray, synthetic_dataset, write_results,
)

NAME = "reader"
WORKERS = 2
WORKER_BATCH = 64  # train.batch_size of the demo (per worker)
MODELS = ("cnn2", "cnn6")


def train_step_rate(model: str, size: int, *, batch: int = WORKER_BATCH,
                    min_seconds: float = 5.0, warmup: int = 3,
                    threads: int | None = 1) -> dict[str, float]:
    """Images/s ``model`` trains on one in-memory batch, repeated (no input pipeline at all).

    ``threads`` sets TensorFlow's intra/inter-op pools; it must run before TensorFlow starts
    (a fresh process), so pass ``None`` where TensorFlow is already running.
    """
    from patchray.models import create_model
    from patchray.models.keras_compat import load_keras, load_tensorflow

    tf = load_tensorflow()
    if threads is not None:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    keras = load_keras()
    net = create_model(model, input_size=size)
    net.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.BinaryCrossentropy())
    rng = np.random.default_rng(0)
    x = rng.random((batch, size, size, 3), dtype=np.float32)
    y = (rng.random(batch) < 0.3).astype(np.float32)
    w = np.ones(batch, np.float32)
    for _ in range(warmup):  # tracing and first-touch allocations
        net.train_on_batch(x, y, sample_weight=w)
    steps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < min_seconds or steps < 3:
        net.train_on_batch(x, y, sample_weight=w)
        steps += 1
    seconds = time.perf_counter() - t0
    return {"steps_per_s": steps / seconds, "images_per_s": steps * batch / seconds,
            "steps": steps}


def read_shard(shard: Any, *, epochs: int, batch: int = WORKER_BATCH) -> list[dict[str, float]]:
    """Iterate a Ray Data shard like the training loop does; rows, seconds and seconds to the
    first batch (the pipeline's start-up, paid again every epoch) per epoch."""
    out = []
    for _ in range(epochs):
        rows, batches, first, t0 = 0, 0, None, time.perf_counter()
        for b in shard.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2):
            rows += len(b["y"])
            batches += 1
            first = first if first is not None else time.perf_counter() - t0
        out.append({"rows": rows, "batches": batches, "seconds": time.perf_counter() - t0,
                    "first_batch_seconds": first or 0.0})
    return out


def measure_reader(dataset: Any, size: int, *, epochs: int,
                   workers: int = WORKERS, reader: str = "v2") -> dict[str, Any]:
    """Images/s each of ``workers`` 1-CPU actors gets from the training pipeline, per epoch.

    Epoch 1 includes starting Ray Data's workers; later epochs show the steady rate (each
    still pays the pipeline's restart, as every training epoch does). ``reader`` picks Ray
    Data's Parquet reader (see :func:`patchray.data.pipeline.use_parquet_reader`)."""
    import ray

    from patchray.data.pipeline import training_dataset
    from patchray.inference.preprocess import Preprocess

    ds = training_dataset(dataset, "train", preprocess=Preprocess(size=size), augment=True,
                          weighting="balanced", parquet_reader=reader)
    shards = ds.streaming_split(workers, equal=True)
    actor = ray.remote(num_cpus=1)(FreshProcess)
    readers = [actor.remote() for _ in range(workers)]
    per_worker = ray.get([r.call.remote(read_shard, s, epochs=epochs)
                          for r, s in zip(readers, shards)])
    for r in readers:
        ray.kill(r)
    epochs_out = []
    for e in range(epochs):
        rates = [w[e]["rows"] / w[e]["seconds"] for w in per_worker]
        epochs_out.append({"epoch": e + 1, "rows": sum(w[e]["rows"] for w in per_worker),
                           "batches_per_worker": [w[e]["batches"] for w in per_worker],
                           "seconds": max(w[e]["seconds"] for w in per_worker),
                           "first_batch_seconds": max(w[e]["first_batch_seconds"]
                                                      for w in per_worker),
                           "per_worker_images_per_s": min(rates)})
    steady = epochs_out[1:] or epochs_out
    return {"reader": reader, "epochs": epochs_out,
            "first_batch_seconds": float(np.median([e["first_batch_seconds"] for e in steady])),
            "per_worker_images_per_s": float(np.median([e["per_worker_images_per_s"]
                                                        for e in steady])),
            "first_epoch_per_worker_images_per_s": epochs_out[0]["per_worker_images_per_s"]}


def measure_consumer(model: str, size: int, *, min_seconds: float) -> dict[str, float]:
    """:func:`train_step_rate` in a fresh 1-CPU Ray actor (TensorFlow on one thread)."""
    return call_in_actor(train_step_rate, model, size, min_seconds=min_seconds, num_cpus=1)


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    patients, per_patient, epochs, min_seconds = (
        (6, 150, 2, 4.0) if opts.quick else (12, 400, 3, 10.0))
    rows, details = [], []
    start_ray(num_cpus=4, object_store_mb=1024)
    try:
        for size in opts.sizes:
            dataset = synthetic_dataset(opts.out / "data", size, patients=patients,
                                        per_patient=per_patient, log=log)
            train_rows = dataset.rows("train")
            log(f"reader {size}x{size}: {train_rows} train patches, {epochs} epochs, "
                f"{WORKERS} shard readers")
            readers = {}
            for version in PARQUET_READERS:
                r = readers[version] = measure_reader(dataset, size, epochs=epochs,
                                                      reader=version)
                rates = [round(e["per_worker_images_per_s"]) for e in r["epochs"]]
                firsts = [round(e["first_batch_seconds"], 1) for e in r["epochs"]]
                log(f"  Parquet reader {version}: {r['per_worker_images_per_s']:.0f} images/s "
                    f"per worker (epochs: {rates}; first batch after {firsts} s)")
            for model in MODELS:
                consumer = measure_consumer(model, size, min_seconds=min_seconds)
                log(f"  {model} trains {consumer['images_per_s']:.0f} images/s on 1 CPU")
                for version, r in readers.items():
                    rows.append({
                        "size": size, "parquet_reader": version, "model": model,
                        "reader_per_worker": r["per_worker_images_per_s"],
                        "first_batch_s": r["first_batch_seconds"],
                        "consumer_per_worker": consumer["images_per_s"],
                        "ratio": r["per_worker_images_per_s"] / consumer["images_per_s"],
                    })
            details.append({"size": size, "train_rows": train_rows, "readers": readers})
    finally:
        ray.shutdown()
    print(format_table(rows, ["size", "parquet_reader", "model", "reader_per_worker",
                              "first_batch_s", "consumer_per_worker", "ratio"]), flush=True)
    log("ratio > 1: the reader delivers more images/s per worker than the model trains")
    chart = bar_chart(
        opts.out / f"{NAME}.png",
        {f"{r['model']} {r['size']}x{r['size']}":
         {**{f"reader, Parquet {q['parquet_reader']}": q["reader_per_worker"] for q in rows
             if (q["model"], q["size"]) == (r["model"], r["size"])},
          "training step (1 CPU)": r["consumer_per_worker"]}
         for r in rows},
        title="Images/s per worker: Ray Data reader vs train step", ylabel="images/s",
    )
    payload = {"benchmark": NAME, "quick": opts.quick, "machine": machine(),
               "workers": WORKERS, "worker_batch": WORKER_BATCH, "rows": rows,
               "details": details, "chart": chart.name}
    path = write_results(opts.out, NAME, payload)
    log(f"wrote {path} and {chart}")
    return payload
