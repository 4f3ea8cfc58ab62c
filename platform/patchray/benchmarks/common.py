"""What every benchmark shares: options, interleaved timing, tables, JSON, charts, data."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from patchray.timing import interleaved_rates  # noqa: F401 - the benchmarks' timer

Log = Callable[[str], None]


def say(msg: str) -> None:
    print(f"[bench] {msg}", flush=True)


@dataclass(frozen=True)
class BenchOptions:
    out: Path
    sizes: tuple[int, ...] = (50, 96)
    quick: bool = False
    gpu_images_per_s: float = 31_000.0  # one H200 training CNN-6L on 96x96 patches
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Limit BLAS/OpenMP pools to one thread, so a rate is a rate per core."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy's own loops are single-threaded anyway
        yield
        return
    with threadpool_limits(1):
        yield


def machine() -> dict[str, Any]:
    """Context for the figures: what ran them and how busy the machine was."""
    import psutil

    return {
        "host_cpus": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "time": dt.datetime.now().isoformat(timespec="seconds"),
    }


def write_results(out: Path, name: str, payload: dict[str, Any]) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    return path


def finish(opts: BenchOptions, name: str, rows: list[dict[str, Any]], chart: Path,
           log: Callable[[str], None], **extra: Any) -> dict[str, Any]:
    """The standard result payload (rows, machine, chart), written to ``<out>/<name>.json``."""
    payload = {"benchmark": name, "quick": opts.quick, "machine": machine(), **extra,
               "rows": rows, "chart": chart.name}
    path = write_results(opts.out, name, payload)
    log(f"wrote {path} and {chart}")
    return payload


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table; floats get 3 significant figures, large ones none after the point."""

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
        return str(v)

    body = [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(b[i]) for b in body)) if body else len(c)
              for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.rjust(w) for v, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def bar_chart(path: Path, groups: dict[str, dict[str, float]], *, title: str, ylabel: str,
              log_scale: bool = False) -> Path:
    """Grouped bars: ``groups[group][bar] = value`` (e.g. size -> layout -> patches/s)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = list(dict.fromkeys(b for g in groups.values() for b in g))
    width = 0.8 / max(1, len(bars))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(groups) * len(bars) / 2 + 3), 4.2))
    for j, bar in enumerate(bars):
        xs = [i + j * width for i in range(len(groups))]
        ax.bar(xs, [g.get(bar, 0.0) for g in groups.values()], width, label=bar)
    ax.set_xticks([i + width * (len(bars) - 1) / 2 for i in range(len(groups))], list(groups))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if log_scale:
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def sample_patches(size: int, n: int, *, seed: int = 0) -> np.ndarray:
    """``n`` synthetic H&E-like uint8 patches of ``size`` x ``size`` (4 patients' stains)."""
    from patchray.data.synthetic import generate_patches

    per = -(-n // 4)
    pixels = [p.pixels for p in generate_patches(4, per, size=size, seed=seed)]
    return np.stack(pixels[:n])


def synthetic_dataset(
    cache: Path, size: int, *, patients: int, per_patient: int, copies: int = 1,
    train: float = 0.6, val: float = 0.2, encoding: str = "png", log: Log = say,
) -> Any:
    """A split Parquet dataset of synthetic patches under ``cache``, ingested once (through
    the ingest path every source takes) and reused; returns its PatchDataset.

    ``copies`` > 1 multiplies the patients (each new one is drawn, not repeated: ingest
    refuses duplicate pixels)."""
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic
    from patchray.data.manifest import PatchDataset

    suffix = "" if encoding == "png" else f"-{encoding}"
    root = cache / f"synthetic-{size}px-{patients}x{per_patient}x{copies}{suffix}"
    if (root / "manifest.json").is_file():
        return PatchDataset.open(str(root))
    t0 = time.perf_counter()
    data = DataConfig.model_validate({
        "synthetic": {"num_patients": patients * copies, "patches_per_patient": per_patient,
                      "patch_size": size},
        "split": {"train": train, "val": val}, "encoding": encoding,
    })
    ingest_synthetic(data, str(root), workers=os.cpu_count() or 1)
    dataset = PatchDataset.open(str(root))
    log(f"wrote {patients * copies * per_patient} synthetic {size}x{size} patches to {root} "
        f"({time.perf_counter() - t0:.0f}s)")
    return dataset


class FreshProcess:
    """A Ray actor body: runs functions in its own new process (TensorFlow not yet started)."""

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def call_in_actor(fn: Callable[..., Any], *args: Any, num_cpus: float, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` in a new Ray actor holding ``num_cpus``; the actor is then killed."""
    import ray

    actor = ray.remote(num_cpus=num_cpus)(FreshProcess).remote()
    try:
        return ray.get(actor.call.remote(fn, *args, **kwargs))
    finally:
        ray.kill(actor)


PARQUET_READERS = ("v2", "v1")


def start_ray(*, num_cpus: int = 4, object_store_mb: int = 1024,
              resources: dict[str, float] | None = None) -> None:
    """A fresh local Ray cluster like the demo's (4 logical CPUs: 2 trainers + Ray Data)."""
    import ray

    from patchray.config import RayConfig
    from patchray.runtime import init_ray

    if ray.is_initialized():
        ray.shutdown()
    init_ray(RayConfig(num_cpus=num_cpus, object_store_memory_mb=object_store_mb,
                       resources=resources or {}))
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = False
