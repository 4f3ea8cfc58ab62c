"""``patchray bench lopo``: leave-one-patient-out on the real IDC patients, with and without
stain normalisation.

    python -m patchray.benchmarks lopo --out runs/bench [--quick]
    python -m patchray.benchmarks.lopo prepare --out runs/datasets/idc-lopo   # the dataset only
    python -m patchray.benchmarks.lopo run --out DIR --arms plain,augment,macenko,reinhard

Dataset: the two real IDC patients of ``../shared/data/idc-sample`` (10253: 479 benign / 70
tumour; 8975: 52 / 51) and ``SYNTHETIC`` synthetic patients (each with its own Beer-Lambert
stain), ingested apart and combined into ONE Parquet dataset (patient ids do not collide;
the manifest records each patient's site: idc or synthetic). Without the real sample the
benchmark runs on synthetic patients only and says so.

Each real patient is held out in turn (synthetic ones too without the sample); the fold's
val group is a synthetic patient (``lopo.val_candidates``), so the one remaining real patient
trains and the held-out one never chooses anything. Two arms, same model, epochs and seeds:
*plain* (``data.stain.method=none``, ``data.stain_augment=0``) and *stain* (Macenko
normalisation fitted on the fold's train split, plus HED stain jitter). Per held-out
patient: AUC and sensitivity at the fold's val-chosen threshold, mean +- sd over seeds.

Goal: a held-out real patient reaches AUC >= 0.90 and sensitivity >= 0.90 at the threshold
chosen without it. ``--quick``: 1 seed, fewer epochs. Results: ``<out>/lopo.json|csv|md``,
``<out>/lopo-<arm>.png``; the folds' own outputs in ``<out>/lopo-runs/<arm>/lopo``. A rerun
with the same ``--out`` keeps finished folds (delete ``<out>/lopo-runs`` to measure afresh).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from patchray.benchmarks.common import BenchOptions, Log, finish, say
from patchray.errors import PatchrayError

NAME = "lopo"
SPEC = Path(__file__).resolve().parents[3] / "jobs" / "lopo-idc-sample.yaml"
IDC_SAMPLE = (Path(__file__).resolve().parents[4] / "shared" / "data" / "idc-sample"
              / "IDC_regular_ps50_idx5")
REAL = ("10253", "8975")
SYNTHETIC = 4  # synthetic patients beside the real ones
SYNTHETIC_PATCHES = 150
AUC_GOAL = SENSITIVITY_GOAL = 0.90
ARMS: dict[str, list[str]] = {
    "plain": ["data.stain.method=none", "data.stain_augment=0.0"],
    "stain": ["data.stain.method=macenko", "data.stain.reference=train",
              "data.stain_augment=0.75"],
}
#: Arms that take the two apart (``python -m patchray.benchmarks.lopo run --arms ...``).
EXTRA_ARMS: dict[str, list[str]] = {
    "augment": ["data.stain.method=none", "data.stain_augment=0.75"],
    "macenko": ["data.stain.method=macenko", "data.stain.reference=train",
                "data.stain_augment=0.0"],
    "reinhard": ["data.stain.method=reinhard", "data.stain.reference=train",
                 "data.stain_augment=0.75"],
}
ALL_ARMS = {**ARMS, **EXTRA_ARMS}


def idc_sample() -> Path | None:
    root = Path(os.environ.get("PATCHRAY_IDC_SAMPLE", IDC_SAMPLE))
    return root if root.is_dir() else None


def prepare_dataset(out: Path, *, synthetic: int = SYNTHETIC,
                    per_patient: int = SYNTHETIC_PATCHES, log: Log = say) -> tuple[Any, bool]:
    """The combined dataset at ``out/combined`` (made once, then reused): the real IDC
    sample when it is there, plus ``synthetic`` synthetic 50x50 patients. Returns the
    dataset and whether the real patients are in it."""
    from patchray.data.ingest import ingest_source
    from patchray.data.manifest import MANIFEST, PatchDataset
    from patchray.data.sources import IdcSource, SyntheticSource
    from patchray.evaluation.lopo import write_combined

    out = out.resolve()
    parts: dict[str, Any] = {}
    real = idc_sample()
    workers = os.cpu_count() or 1
    if real is not None:
        root = out / "idc"
        if not (root / MANIFEST).is_file():
            log(f"ingesting the real IDC sample {real}")
            # All train: LOPO re-splits by patient (two patients cannot be split 3 ways).
            ingest_source(IdcSource(real), str(root), split_map=dict.fromkeys(REAL, "train"),
                          workers=workers)
        parts["idc"] = PatchDataset.open(str(root))
    else:
        log(f"the real IDC sample is not at {IDC_SAMPLE}: synthetic patients only")
    root = out / f"synthetic-{synthetic}x{per_patient}"
    if not (root / MANIFEST).is_file():
        log(f"ingesting {synthetic} synthetic patients x {per_patient} patches")
        ingest_source(SyntheticSource(synthetic, per_patient, size=50, positive_fraction=0.3,
                                      seed=0), str(root), workers=workers)
    parts["synthetic"] = PatchDataset.open(str(root))
    combined = write_combined(parts, str(out / "combined"))
    log(f"combined dataset {combined.root}: {combined.rows('train')} patches, sites "
        f"{sorted(set(combined.manifest.source['sites'].values()))}")
    return combined, real is not None


def arm_config(arm: str, dataset: Any, *, has_real: bool, seeds: list[int], epochs: int,
               runs_root: Path) -> Any:
    from patchray.config import LopoJobConfig, load_config
    from patchray.evaluation.lopo import patient_counts

    synth = sorted(p for p in patient_counts(dataset) if p not in REAL)
    hold_out = list(REAL) if has_real else synth[:2]
    overrides = [f"name={arm}", f"runs_root={runs_root}", f"data.root={dataset.root}",
                 f"train.epochs={epochs}", f"lopo.seeds={json.dumps(seeds)}",
                 f"lopo.hold_out={json.dumps(hold_out)}",
                 f"lopo.val_candidates={json.dumps(synth)}", *ALL_ARMS[arm]]
    return load_config(SPEC, overrides, model=LopoJobConfig)


def side_by_side(arms: dict[str, Any], target: float) -> list[dict[str, Any]]:
    """One row per held-out patient: each arm's AUC and sensitivity mean +- sd over seeds."""
    names = list(dict.fromkeys(r["held_out"] for a in arms.values() for r in a.results))
    rows = []
    for name in names:
        row: dict[str, Any] = {"held_out": name, "real": name in REAL}
        for arm, res in arms.items():
            g = res.summary["per_group"].get(name)
            if g is None:
                continue
            for key in ("auc", "sensitivity", "specificity"):
                row[f"{arm}_{key}_mean"] = g[f"{key}_mean"]
                row[f"{arm}_{key}_sd"] = g[f"{key}_sd"]
            row[f"{arm}_seeds"] = len(g["seeds"])
            row[f"{arm}_goal_met"] = bool(
                (g["auc_mean"] or 0) >= AUC_GOAL and (g["sensitivity_mean"] or 0) >= SENSITIVITY_GOAL)
            folds = [r for r in res.results if r["held_out"] == name]
            row[f"{arm}_goal_met_folds"] = sum(
                (r["auc"] or 0) >= AUC_GOAL and (r["sensitivity"] or 0) >= SENSITIVITY_GOAL
                for r in folds)
            row[f"{arm}_thresholds"] = [round(r["threshold"], 4) for r in folds]
            row[f"{arm}_val"] = sorted({v for r in folds for v in r["val_groups"]})
        rows.append(row)
    return rows


def _pm(row: dict[str, Any], arm: str, key: str) -> str:
    from patchray.evaluation.lopo import pm

    return pm(row.get(f"{arm}_{key}_mean"), row.get(f"{arm}_{key}_sd"))


def table_md(rows: list[dict[str, Any]], arms: list[str], *, seeds: int, epochs: int,
             model: str, has_real: bool, target: float) -> str:
    head = ["held out"] + [f"{a} {k}" for a in arms for k in ("AUC", "sensitivity",
                                                                "specificity", "goal")]
    lines = ["## Leave-one-patient-out, with and without stain normalisation", "",
             f"{model}, {epochs} epochs, {seeds} seed(s) per fold; mean +- sd over seeds; "
             f"threshold chosen on a synthetic val patient for sensitivity >= {target:g}; "
             f"goal: AUC >= {AUC_GOAL} and sensitivity >= {SENSITIVITY_GOAL} on the held-out "
             "real patient." + ("" if has_real else " NO REAL DATA: synthetic patients only."),
             "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["held_out"] + (" (real)" if r["real"] else "")]
        for a in arms:
            cells += [_pm(r, a, "auc"), _pm(r, a, "sensitivity"), _pm(r, a, "specificity"),
                      ("met" if r.get(f"{a}_goal_met") else "not met")
                      + f" ({r.get(f'{a}_goal_met_folds', 0)}/{r.get(f'{a}_seeds', 0)} seeds)"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    import ray

    from patchray.benchmarks.common import start_ray
    from patchray.evaluation.lopo_folds import run_lopo
    from patchray.tuning.plan import SLOT

    dataset, has_real = prepare_dataset(opts.out / "lopo-data", log=log)
    seeds = list(range(int(opts.extra.get("seeds") or (1 if opts.quick else 3))))
    epochs = int(opts.extra.get("epochs") or (8 if opts.quick else 12))
    runs_root = (opts.out / "lopo-runs").resolve()
    arms = list(opts.extra.get("arms") or ARMS)
    cfgs = {arm: arm_config(arm, dataset, has_real=has_real, seeds=seeds, epochs=epochs,
                            runs_root=runs_root) for arm in arms}
    first = next(iter(cfgs.values()))
    start_ray(num_cpus=first.ray.num_cpus or 4,
              object_store_mb=first.ray.object_store_memory_mb or 512, resources={SLOT: 1.0})
    results: dict[str, Any] = {}
    walls: dict[str, float] = {}
    errors: dict[str, str] = {}
    try:
        for arm, cfg in cfgs.items():
            log(f"arm {arm}: {cfg.train.model}, {epochs} epochs, seeds {seeds}, hold out "
                f"{cfg.lopo.hold_out} ({' '.join(ALL_ARMS[arm])})")
            t0 = time.perf_counter()
            try:
                out_dir = runs_root / arm / "lopo"
                out_dir.mkdir(parents=True, exist_ok=True)
                results[arm] = run_lopo(cfg, dataset, out_dir)
            except PatchrayError as e:  # the other arm still runs; the table says which failed
                errors[arm] = f"{type(e).__name__}: {e}"
                log(f"arm {arm} FAILED: {errors[arm]}")
            walls[arm] = time.perf_counter() - t0
    finally:
        ray.shutdown()
    if not results:
        raise PatchrayError(f"every arm failed: {errors}")
    target = float(first.lopo.target_sensitivity or first.eval.min_sensitivity)
    rows = side_by_side(results, target)
    md = table_md(rows, list(results), seeds=len(seeds), epochs=epochs, model=first.train.model,
                  has_real=has_real, target=target)
    md += "".join(f"\nArm {arm} failed: {err}\n" for arm, err in errors.items())
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{NAME}.md").write_text(md + "".join(
        f"\n### arm {arm}\n\n" + res.outputs["md"].read_text().split("\n", 2)[2]
        for arm, res in results.items()))
    with (opts.out / f"{NAME}.csv").open("w", newline="") as f:
        keys = list(dict.fromkeys(k for r in rows for k in r))
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        w.writerows(rows)
    charts = {}
    for arm, res in results.items():
        charts[arm] = opts.out / f"{NAME}-{arm}.png"
        shutil.copyfile(res.outputs["png"], charts[arm])
    print(md, flush=True)
    real_rows = [r for r in rows if r["real"]]
    goal = {arm: bool(real_rows) and all(r.get(f"{arm}_goal_met") for r in real_rows)
            for arm in results}
    for arm in results:
        log(f"goal (every held-out real patient: AUC >= {AUC_GOAL}, sensitivity >= "
            f"{SENSITIVITY_GOAL}, mean over seeds) with arm {arm}: "
            f"{'met' if goal[arm] else 'NOT met'}; wall {walls[arm]:.0f} s")
    return finish(opts, NAME, rows, next(iter(charts.values())), log, real_data=has_real,
                  model=first.train.model, epochs=epochs, seeds=seeds,
                  arms={a: " ".join(ALL_ARMS[a]) for a in arms},
                  charts={a: p.name for a, p in charts.items()}, goal_met=goal,
                  wall_s=walls, target_sensitivity=target, errors=errors,
                  summaries={a: r.summary for a, r in results.items()},
                  folds={a: r.results for a, r in results.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m patchray.benchmarks.lopo")
    p.add_argument("command", choices=["prepare", "run"],
                   help="prepare: write the combined dataset; run: the benchmark")
    p.add_argument("--out", type=Path, default=None,
                   help="default runs/datasets/idc-lopo (prepare), runs/bench (run)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--arms", default=",".join(ARMS),
                   help=f"run: comma-separated, of {', '.join(ALL_ARMS)}")
    p.add_argument("--seeds", type=int, help="run: seeds per fold (default 3, --quick 1)")
    p.add_argument("--epochs", type=int, help="run: epochs (default 12, --quick 8)")
    args = p.parse_args(argv)
    if args.command == "prepare":
        dataset, _ = prepare_dataset(args.out or Path("runs/datasets/idc-lopo"))
        print(dataset.root)
        return 0
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ALL_ARMS]
    if unknown:
        p.error(f"--arms: unknown {unknown}; choose from {', '.join(ALL_ARMS)}")
    from patchray.runtime import prepare_process

    prepare_process()
    run(BenchOptions(out=args.out or Path("runs/bench"), quick=args.quick,
                     extra={"arms": arms, "seeds": args.seeds, "epochs": args.epochs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
