"""``tune``: Hyperband against random search, same trials, same full budget per trial.

Both searches run the job of ``jobs/tune-demo.yaml`` (cnn2 on synthetic 32x32 H&E patches,
9 trials of up to 9 epochs, the same seed, hence the same 9 sampled points) one after the
other on one local Ray cluster: *random* trains every trial for ``max_t`` epochs (Tune's FIFO
scheduler), *hyperband* is ``tune.scheduler: hyperband`` (eta 3). Reported per search: the
epochs trained in all, the epochs trained until its best validation AUC was first reported
(by wall clock across the concurrent trials), its best validation AUC, and its wall time.

Goal: hyperband trains >= 3x fewer epochs for a best val AUC within 0.01 of random search's
(Li et al. report 5x to 30x on larger searches). ``--quick``: 3 trials of up to 3 epochs, to
check the benchmark runs, not a figure to quote.

    python -m patchray.benchmarks tune --out runs/bench [--quick]
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from patchray.benchmarks.common import (
    BenchOptions, Log, finish, format_table, say, start_ray, synthetic_dataset,
)

NAME = "tune"
SPEC = Path(__file__).resolve().parents[3] / "jobs" / "tune-demo.yaml"
SEARCHES = ("random", "hyperband")


def epochs_until_best(records: list[Any]) -> int:
    """Epochs trained, across all trials, up to the report of the search's best val AUC."""
    epochs = [h for r in records for h in r.history]
    if not epochs:
        return 0
    best = max(epochs, key=lambda h: (h["val_auc"], -h.get("finished_at", 0.0)))
    return sum(1 for h in epochs if h.get("finished_at", 0.0) <= best.get("finished_at", 0.0))


def search(scheduler: str, opts: BenchOptions, dataset: Any, log: Log) -> dict[str, Any]:
    from patchray.config import TuneJobConfig, load_config
    from patchray.tuning.experiment import ExperimentPaths, run_experiment

    overrides = [f"name={NAME}-{scheduler}", f"data.root={dataset.root}",
                 f"tune.scheduler={scheduler}"]
    if opts.quick:
        overrides += ["tune.num_samples=3", "tune.max_t=3"]
    cfg = load_config(SPEC, overrides, model=TuneJobConfig)
    paths = ExperimentPaths((opts.out / "tune-runs" / cfg.name).resolve())
    if paths.root.exists():  # a benchmark measures a whole search, never a restored one
        shutil.rmtree(paths.root)
    log(f"{scheduler}: {cfg.tune.num_samples} trials of up to {cfg.tune.max_t} epochs")
    t0 = time.perf_counter()
    result = run_experiment(cfg, dataset, paths)
    wall = time.perf_counter() - t0
    s = result.summary
    return {
        "search": scheduler, "trials": len(s.records), "max_t": s.max_t,
        "epochs": s.total_epochs, "epochs_until_best": epochs_until_best(s.records),
        "best_val_auc": s.best.best_auc, "best_trial": s.best.trial_id,
        "wall_s": wall, "summary": s, "results": str(paths.results),
    }


def curves_chart(runs: list[dict[str, Any]], path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from patchray.tuning.results import draw_curves

    fig, axes = plt.subplots(1, len(runs), figsize=(6.2 * len(runs), 4.2), dpi=110, sharey=True)
    for ax, run in zip(axes, runs):
        draw_curves(ax, run["summary"], title=(
            f"{run['search']}: {run['epochs']} epochs, best val AUC {run['best_val_auc']:.4f}"))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    from patchray.config import TuneJobConfig, load_config
    from patchray.tuning.plan import SLOT

    spec = load_config(SPEC, model=TuneJobConfig)
    synth = spec.data.synthetic
    dataset = synthetic_dataset((opts.out / "data").resolve(), synth.patch_size,
                                patients=synth.num_patients, per_patient=synth.patches_per_patient,
                                log=log)
    start_ray(num_cpus=spec.ray.num_cpus or 4, object_store_mb=spec.ray.object_store_memory_mb or 512,
              resources={SLOT: 1.0})
    try:
        runs = [search(s, opts, dataset, log) for s in SEARCHES]
    finally:
        ray.shutdown()
    random_run, hyper = runs
    ratio = random_run["epochs"] / max(1, hyper["epochs"])
    auc_gap = random_run["best_val_auc"] - hyper["best_val_auc"]
    rows = [{k: v for k, v in r.items() if k != "summary"} for r in runs]
    print(format_table(rows, ["search", "trials", "max_t", "epochs", "epochs_until_best",
                              "best_val_auc", "wall_s"]), flush=True)
    log(f"hyperband trained {ratio:.2f}x fewer epochs than random search; best val AUC "
        f"{hyper['best_val_auc']:.4f} vs {random_run['best_val_auc']:.4f} (gap {auc_gap:+.4f}); "
        f"goal: >= 3x within 0.01; wall time ratio {random_run['wall_s'] / hyper['wall_s']:.2f}x")
    chart = curves_chart(runs, opts.out / f"{NAME}.png")
    return finish(opts, NAME, rows, chart, log, epochs_ratio=ratio, auc_gap=auc_gap,
                  goal_met=bool(ratio >= 3.0 and auc_gap <= 0.01))
