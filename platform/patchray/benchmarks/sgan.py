"""``patchray bench sgan``: a semi-supervised GAN on 20% of the labels against cnn6 on the
same 20% alone (and cnn6 on 100%, the ceiling), through the real ``patchray train`` path.

    python -m patchray.benchmarks sgan --out runs/bench [--quick]

One synthetic dataset (patients split train/val/test by patient, ingested like any source)
is made once. From its train split, 20% of the patches keep their label (chosen by a fixed
seed, stratified by class: exactly ``round(0.2 * n_c)`` of class ``c``); the rest are written
as the ``unlabelled`` split, label null, with the ingest writers (``SplitWriter``,
``finish_dataset``). val and test are copied unchanged. Arms, each trained by
``patchray train`` in a child process (Ray Train with 2 workers, export, evaluation,
registration) on the same splits, epochs, batch size and augmentation:

* ``sgan_cnn6 (20% + 80% unlabelled)``: ``train.model=sgan_cnn6`` on the 20% dataset, which
  reads train + unlabelled;
* ``cnn6 (20%)``: the same dataset; a supervised model reads train (the 20%) only;
* ``cnn6 (100%)``: the fully labelled dataset, the ceiling.

Reported per arm and training seed: test AUC, val AUC, and test sensitivity/specificity at
the threshold chosen on val (Youden's J); then mean +- sd over seeds. Salimans et al.
(2016) and NAS-SGAN report gains from unlabelled data on real images; this measures it on
synthetic H&E-like patches, which says nothing about real tissue. ``--quick``: one seed,
fewer patches and epochs, to check the benchmark runs, not a figure to quote.
Results: ``<out>/sgan.json``, ``sgan.csv``, ``sgan.md``, ``sgan.png``.
"""

from __future__ import annotations

import csv
import hashlib
import json
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from patchray.benchmarks.common import (
    BenchOptions, Log, finish, format_table, say, write_results,
)
from patchray.evaluation.evaluate import METRICS_FILE

NAME = "sgan"
SPEC = Path(__file__).resolve().parents[3] / "jobs" / "train-demo.yaml"
LABELLED_FRACTION = 0.2
DATA_SEED = 0  # which patches keep their label: one labelled subset for every training seed
ARMS = ("sgan_cnn6 (20% + 80% unlabelled)", "cnn6 (20%)", "cnn6 (100%)")
PLANS = {  # patients, patches per patient, patch size, epochs, training seeds
    "quick": (8, 100, 32, 4, (0,)),
    "full": (10, 160, 32, 12, (0, 1, 2)),
}
COLUMNS = ["arm", "seed", "test_auc", "val_auc", "test_sensitivity", "test_specificity",
           "threshold", "best_epoch", "labelled_train", "unlabelled_train", "train_s"]


def stratified_subset(labels: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask keeping ``round(fraction * n_c)`` rows of every class ``c`` (at least
    one), drawn with ``seed``. Hand-written rather than sklearn's StratifiedShuffleSplit,
    whose per-class counts are only approximately ``fraction * n_c``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"labelled fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    keep = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        k = max(1, round(fraction * len(idx)))
        keep[rng.choice(idx, size=k, replace=False)] = True
    return keep


def semi_supervised_dataset(full: Any, root: str, *, fraction: float = LABELLED_FRACTION,
                            seed: int = DATA_SEED, rows_per_file: int = 2000) -> Any:
    """Write a copy of ``full`` (a PatchDataset) at ``root`` whose train split keeps the
    labels of a stratified ``fraction`` of its patches; the other train patches become the
    ``unlabelled`` split (label null, same patients). val and test are copied as they are.
    Returns the new PatchDataset."""
    import pyarrow.parquet as pq

    from patchray.data.ingest import SplitWriter, begin_dataset, finish_dataset
    from patchray.data.manifest import PatchDataset
    from patchray.data.records import SPLITS, UNLABELLED

    def rows_of(split: str) -> list[dict[str, Any]]:
        fs, paths = full.split_files(split)
        return [r for p in paths for r in pq.read_table(p, filesystem=fs).to_pylist()]

    begin_dataset(root)
    digest = hashlib.sha256()
    writers = {s: SplitWriter(root, s, rows_per_file, digest) for s in (*SPLITS, UNLABELLED)}
    train = rows_of("train")
    keep = stratified_subset(np.array([r["label"] for r in train]), fraction, seed)
    for row, labelled in zip(train, keep):
        writers["train" if labelled else UNLABELLED].add(row if labelled
                                                         else {**row, "label": None})
    for split in ("val", "test"):
        for row in rows_of(split):
            writers[split].add(row)
    splits = {s: w.finish() for s, w in writers.items()}
    m = full.manifest
    finish_dataset(root, splits, {
        "dataset": m.dataset,
        "source": {**m.source, "semi_supervised": {
            "from": full.root, "labelled_fraction": fraction, "seed": seed,
            "stratified_by": "label"}},
        "split_rule": m.split_rule,
        "content_sha256": digest.hexdigest(),
        "class_names": m.class_names,
        "nominal_size": m.nominal_size,
        "patch_sizes": m.patch_sizes,
    }, encoding=full.encoding)
    return PatchDataset.open(root)


def train_arm(arm: str, dataset: Any, *, seed: int, epochs: int, size: int, out: Path,
              log: Log) -> dict[str, Any]:
    """One ``patchray train`` run (train with Ray Train, export, evaluate, register) in a
    child process with its own local Ray; its figures, read from the run's report.

    Through the CLI rather than ``patchray.workflows``: benchmarks sit below the workflows."""
    model = "sgan_cnn6" if arm.startswith("sgan") else "cnn6"
    slug = {ARMS[0]: "sgan20", ARMS[1]: "cnn6-20", ARMS[2]: "cnn6-100"}[arm]
    name = f"bench-sgan-{slug}-seed{seed}"
    runs = (out / "sgan-runs").resolve()
    shutil.rmtree(runs / name, ignore_errors=True)  # a benchmark measures whole runs
    overrides = [
        f"name={name}", f"runs_root={runs}", f"registry.root={runs / 'registry'}",
        f"data.root={dataset.root}", f"train.model={model}", f"train.epochs={epochs}",
        f"train.seed={seed}", f"train.input_size={size}", "train.batch_size=16",
        "data.augment=true", "data.class_weighting=balanced", "eval.threshold_rule=youden",
        "export.precisions=[f32]",  # the figures are f32's; INT8/bf16 only cost time here
    ]
    cmd = [sys.executable, "-m", "patchray.cli", "train", "--config", str(SPEC)]
    for o in overrides:
        cmd += ["--set", o]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"patchray train ({arm}, seed {seed}) exited {proc.returncode}:\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    m = json.loads((runs / name / "report" / METRICS_FILE).read_text())
    unlabelled = dataset.rows("unlabelled") if model == "sgan_cnn6" else 0
    row = {
        "arm": arm, "seed": seed, "test_auc": m["test"]["auc"], "val_auc": m["val"]["auc"],
        "test_sensitivity": m["test"]["sensitivity"],
        "test_specificity": m["test"]["specificity"], "threshold": m["threshold"]["value"],
        "best_epoch": m["best_epoch"], "labelled_train": dataset.rows("train"),
        "unlabelled_train": unlabelled, "train_s": wall, "run_dir": str(runs / name),
    }
    log(f"{arm} seed {seed}: test AUC {row['test_auc']:.4f}, val AUC {row['val_auc']:.4f}, "
        f"sens {row['test_sensitivity']:.3f} spec {row['test_specificity']:.3f} "
        f"({wall:.0f}s)")
    return row


def summarise(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and sample sd over seeds per arm (sd 0 for a single seed)."""
    out = []
    for arm in dict.fromkeys(r["arm"] for r in rows):
        mine = [r for r in rows if r["arm"] == arm]
        entry: dict[str, Any] = {"arm": arm, "seeds": len(mine)}
        for k in ("test_auc", "val_auc", "test_sensitivity", "test_specificity"):
            values = [float(r[k]) for r in mine]
            entry[f"{k}_mean"] = statistics.fmean(values)
            entry[f"{k}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        out.append(entry)
    return out


def markdown(rows: list[dict[str, Any]], summary: list[dict[str, Any]]) -> str:
    """The per-seed table and the mean +- sd table, as markdown."""
    lines = ["| arm | seed | test AUC | val AUC | test sensitivity | test specificity |",
             "|---|---|---|---|---|---|"]
    lines += [f"| {r['arm']} | {r['seed']} | {r['test_auc']:.4f} | {r['val_auc']:.4f} | "
              f"{r['test_sensitivity']:.3f} | {r['test_specificity']:.3f} |" for r in rows]
    lines += ["", "| arm | seeds | test AUC | val AUC | test sensitivity | test specificity |",
              "|---|---|---|---|---|---|"]
    for s in summary:
        cells = [f"{s[k + '_mean']:.4f} ± {s[k + '_sd']:.4f}"
                 for k in ("test_auc", "val_auc", "test_sensitivity", "test_specificity")]
        lines.append(f"| {s['arm']} | {s['seeds']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def chart(rows: list[dict[str, Any]], summary: list[dict[str, Any]], path: Path,
          title: str) -> Path:
    """Test AUC per seed (points) and the mean +- sd (bars) of every arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5.0), dpi=110)
    for i, s in enumerate(summary):
        ax.bar(i, s["test_auc_mean"], 0.6, yerr=s["test_auc_sd"], alpha=0.35, capsize=4,
               label=f"{s['arm']}: {s['test_auc_mean']:.3f} ± {s['test_auc_sd']:.3f}")
        mine = [r for r in rows if r["arm"] == s["arm"]]
        offsets = np.linspace(-0.15, 0.15, len(mine)) if len(mine) > 1 else [0.0]
        for dx, r in zip(offsets, mine):
            ax.plot(i + dx, r["test_auc"], "o", color="black", ms=5)
            ax.annotate(f"s{r['seed']}", (i + dx, r["test_auc"]), fontsize=7,
                        xytext=(3, 3), textcoords="offset points")
    ax.set_xticks(range(len(summary)), [s["arm"] for s in summary], fontsize=8)
    low = min(r["test_auc"] for r in rows)
    ax.set_ylim(max(0.0, low - 0.1), 1.0)
    ax.set_ylabel("test AUC")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def full_dataset(cache: Path, patients: int, per_patient: int, size: int, log: Log) -> Any:
    """The fully labelled synthetic dataset (ingested once, reused)."""
    from patchray.benchmarks.common import synthetic_dataset

    return synthetic_dataset(cache, size, patients=patients, per_patient=per_patient, log=log)


def run(opts: BenchOptions, log: Log = say) -> dict[str, Any]:
    patients, per_patient, size, epochs, seeds = PLANS["quick" if opts.quick else "full"]
    cache = (opts.out / "sgan-data").resolve()
    full = full_dataset(cache, patients, per_patient, size, log)
    semi_root = cache / f"{Path(full.root).name}-labels{round(LABELLED_FRACTION * 100)}"
    semi = semi_supervised_dataset(full, str(semi_root))
    log(f"{semi.root}: train {semi.rows('train')} labelled {semi.label_counts('train')}, "
        f"unlabelled {semi.rows('unlabelled')}, val {semi.rows('val')}, test {semi.rows('test')}")
    rows = []
    for seed in seeds:
        for arm in ARMS:
            dataset = full if arm == ARMS[2] else semi
            rows.append(train_arm(arm, dataset, seed=seed, epochs=epochs, size=size,
                                  out=opts.out, log=log))
            # The runs so far, in case the benchmark is stopped before the end.
            write_results(opts.out, f"{NAME}.partial", {"rows": rows})
    summary = summarise(rows)
    log("\n" + format_table(rows, COLUMNS[:7]))
    opts.out.mkdir(parents=True, exist_ok=True)
    (opts.out / f"{NAME}.md").write_text(markdown(rows, summary))
    with open(opts.out / f"{NAME}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    title = (f"SGAN vs supervised cnn6, {LABELLED_FRACTION:.0%} labels, synthetic {size}px, "
             f"{epochs} epochs, {len(seeds)} seed(s)")
    png = chart(rows, summary, opts.out / f"{NAME}.png", title)
    return finish(opts, NAME, rows, png, log, summary=summary, plan={
        "patients": patients, "patches_per_patient": per_patient, "patch_size": size,
        "epochs": epochs, "seeds": list(seeds), "labelled_fraction": LABELLED_FRACTION,
        "data_seed": DATA_SEED, "threshold_rule": "youden (on val)",
        "datasets": {"full": full.root, "semi_supervised": semi.root},
    })
