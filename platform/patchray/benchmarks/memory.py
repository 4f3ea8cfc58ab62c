"""``memory``: one epoch through an object store several times smaller than the data stays bounded.

Ray starts with a 200 MB object store; the training pipeline
(:func:`patchray.data.pipeline.training_dataset`, PNG decode + augmentation, uint8 out)
streams a train split whose decoded patches are several times that (6x the store full, 3x
quick) to a consumer on the driver that takes batches at a fixed pace, slower than the
reader, so Ray Data's backpressure has to hold the producers back. Every 0.5 s the memory
of the driver and all its descendants (GCS, raylet, workers) is sampled with psutil: the sum
of PSS (shared object-store pages counted once, split between the processes mapping them)
and, as an upper bound, the sum of RSS.

    python -m patchray.benchmarks memory --out runs/bench [--size 96] [--quick]
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

from patchray.benchmarks.common import (
    BenchOptions, Log, format_table, machine, say, start_ray, synthetic_dataset, write_results,
)

NAME = "memory"
MB = 2**20
OBJECT_STORE_MB = 200
BATCH = 64


class MemorySampler:
    """Samples the summed PSS and RSS of a process tree every ``interval`` s in a thread."""

    def __init__(self, pid: int | None = None, interval: float = 0.5) -> None:
        self.pid, self.interval = pid or os.getpid(), interval
        self.samples: list[dict[str, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="memory-sampler", daemon=True)
        self._t0 = time.perf_counter()

    def sample(self) -> dict[str, float]:
        import psutil

        root = psutil.Process(self.pid)
        pss = rss = 0
        procs = 0
        kinds: dict[str, float] = {}
        for p in [root, *root.children(recursive=True)]:
            try:
                info = p.memory_full_info()
                kind = "driver" if p.pid == self.pid else _kind(p.name(), p.cmdline())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            pss += getattr(info, "pss", info.rss)
            rss += info.rss
            procs += 1
            kinds[kind] = kinds.get(kind, 0.0) + getattr(info, "pss", info.rss) / MB
        s = {"t": time.perf_counter() - self._t0, "pss_mb": pss / MB, "rss_mb": rss / MB,
             "processes": procs, "pss_mb_by_kind": kinds}
        self.samples.append(s)
        return s

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> MemorySampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def mark(self) -> float:
        """Seconds since the sampler started (to place events on the chart)."""
        return time.perf_counter() - self._t0


def _kind(name: str, cmdline: list[str]) -> str:
    """What a process is: ``raylet``, ``gcs_server``, a Ray worker's title (``ray::IDLE``,
    ``ray::MapBatches(...)``, ``ray::SplitCoordinator``...), or its executable name."""
    title = " ".join(cmdline)
    if title.startswith("ray::"):
        return title.split(" ")[0][:60]
    return name


def consume_epoch(ds: Any, *, images_per_s: float, batch: int = BATCH) -> dict[str, float]:
    """Iterate ``ds`` once like a training worker, at most ``images_per_s``; what arrived."""
    rows = nbytes = 0
    t0 = time.perf_counter()
    for b in ds.iter_batches(batch_size=batch, batch_format="numpy", prefetch_batches=2):
        rows += len(b["x"])
        nbytes += sum(v.nbytes for v in b.values())
        ahead = rows / images_per_s - (time.perf_counter() - t0)
        if ahead > 0:  # a training step would still be running
            time.sleep(ahead)
    return {"rows": rows, "decoded_bytes": nbytes, "seconds": time.perf_counter() - t0}


def measure_memory(dataset: Any, size: int, *, images_per_s: float,
                   object_store_mb: float) -> dict[str, Any]:
    """One epoch of the training pipeline under a :class:`MemorySampler` (Ray already up)."""
    from patchray.data.pipeline import training_dataset
    from patchray.inference.preprocess import Preprocess

    ds = training_dataset(dataset, "train", preprocess=Preprocess(size=size), augment=True,
                          weighting="balanced")
    with MemorySampler() as sampler:
        time.sleep(2.0)  # the idle cluster: the baseline
        start = sampler.mark()
        epoch = consume_epoch(ds, images_per_s=images_per_s)
        end = sampler.mark()
        time.sleep(1.0)
    samples = sampler.samples
    idle = [s for s in samples if s["t"] <= start] or samples[:1]
    busy = [s for s in samples if start <= s["t"] <= end] or samples
    base_pss = min(s["pss_mb"] for s in idle)
    peak = max(busy, key=lambda s: s["pss_mb"])
    decoded_mb = epoch["decoded_bytes"] / MB
    return {
        "size": size,
        "rows": epoch["rows"],
        "decoded_mb": decoded_mb,
        "object_store_mb": object_store_mb,
        "epoch_seconds": epoch["seconds"],
        "consumer_images_per_s": images_per_s,
        "baseline_pss_mb": base_pss,
        "peak_pss_mb": peak["pss_mb"],
        "peak_rss_mb": max(s["rss_mb"] for s in busy),
        "peak_pss_mb_by_kind": dict(sorted(peak["pss_mb_by_kind"].items(),
                                           key=lambda kv: -kv[1])),
        "peak_processes": peak["processes"],
        "growth_mb": peak["pss_mb"] - base_pss,
        "growth_vs_object_store": (peak["pss_mb"] - base_pss) / object_store_mb,
        "growth_vs_dataset": (peak["pss_mb"] - base_pss) / decoded_mb,
        "dataset_vs_object_store": decoded_mb / object_store_mb,
        # Ray starts spill/restore workers when the object store overflows to disk.
        "spill_workers_seen": any("Spill" in k or "Restore" in k
                                  for smp in samples for k in smp["pss_mb_by_kind"]),
        "epoch_window_s": [start, end],
        "samples": samples,
    }


def memory_chart(path: Path, result: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t"] for s in result["samples"]]
    fig, ax = plt.subplots(figsize=(8, 4.2))
    ax.plot(t, [s["pss_mb"] for s in result["samples"]], label="PSS, driver + Ray processes")
    ax.plot(t, [s["rss_mb"] for s in result["samples"]], alpha=0.5, label="RSS (upper bound)")
    base = result["baseline_pss_mb"]
    ax.axhline(base, color="grey", ls=":", label="idle cluster (PSS)")
    ax.axhline(base + result["object_store_mb"], color="red", ls="--",
               label=f"idle + object store ({result['object_store_mb']:.0f} MB)")
    ax.axvspan(*result["epoch_window_s"], color="green", alpha=0.08, label="epoch")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MB")
    ax.set_title(f"One epoch of {result['decoded_mb']:.0f} MB decoded uint8 patches "
                 f"({result['size']}x{result['size']}) through a "
                 f"{result['object_store_mb']:.0f} MB object store", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    size = max(opts.sizes)
    # The train split (90% of rows) must decode to target_mb of uint8 patches -- what moves
    # through Ray's object store -- several times the store's size.
    target_mb = 3 * OBJECT_STORE_MB if opts.quick else 6 * OBJECT_STORE_MB
    unique = 600 if opts.quick else 1500
    copies = max(1, round(target_mb * MB / (size * size * 3) / 0.9 / unique))
    dataset = synthetic_dataset(opts.out / "data", size, patients=6,
                                per_patient=unique // 6, copies=copies, train=0.9,
                                val=0.05, log=log)
    images_per_s = 300.0 if size >= 96 else 900.0
    log(f"memory {size}x{size}: {dataset.rows('train')} train patches, "
        f"object store {OBJECT_STORE_MB} MB, consumer paced at {images_per_s:.0f} images/s")
    start_ray(num_cpus=4, object_store_mb=OBJECT_STORE_MB)
    try:
        result = measure_memory(dataset, size, images_per_s=images_per_s,
                                object_store_mb=OBJECT_STORE_MB)
    finally:
        ray.shutdown()
    columns = ["size", "rows", "decoded_mb", "object_store_mb", "baseline_pss_mb", "peak_pss_mb",
               "growth_mb", "growth_vs_object_store", "growth_vs_dataset", "peak_rss_mb",
               "spill_workers_seen"]
    print(format_table([result], columns), flush=True)
    log("PSS at the peak by process: " + ", ".join(
        f"{k} {v:.0f} MB" for k, v in list(result["peak_pss_mb_by_kind"].items())[:6]))
    chart = memory_chart(opts.out / f"{NAME}.png", result)
    payload = {"benchmark": NAME, "quick": opts.quick, "machine": machine(), "result": result,
               "chart": chart.name}
    path = write_results(opts.out, NAME, payload)
    log(f"wrote {path} and {chart}")
    return payload
