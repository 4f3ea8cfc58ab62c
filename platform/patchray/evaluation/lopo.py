"""Leave-one-patient-out (LOPO) evaluation: the plain functions (no Ray).

A fold holds one group (a patient, or a site) out as its test set. ``val_groups`` of the
remaining groups validate: the fold's best checkpoint and its decision threshold come from
them, never from the held-out group. The rest train. Every fold is repeated for each seed.

Fold datasets are materialised: the source dataset's rows are rewritten with ingest's own
writer (:class:`~patchray.data.ingest.SplitWriter`, :func:`~patchray.data.ingest.finish_dataset`)
into ``<run>/lopo/folds/<held-out>/data`` with train / val / test re-assigned. A copy per fold
costs disk (fine for the 100-10 000-patch patients this is for), but every reader (Ray Train,
export's parity gate, scoring, ``dataset validate``) then sees an ordinary dataset with the
patient-disjoint check of any ingest, and nothing downstream needs to know about folds. A
manifest pointing into shared per-patient files would save the copy but needs files split by
patient and paths outside the dataset root, which object storage readers do not allow.

    runs/<name>/lopo/
      folds/<held-out>/data/             the fold's dataset (shared by its seeds)
      folds/<held-out>/seed-<s>/         Ray Train run, best checkpoint, export, result.json
      lopo.json, lopo.csv, lopo.md       one row per fold x seed, plus the pooled summary
      lopo.png                           ROC per held-out group; sensitivity vs the target
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from patchray import storage
from patchray.config import LopoConfig
from patchray.data.manifest import MANIFEST, PatchDataset
from patchray.errors import ConfigError, DataError

RESULT = "result.json"  # a finished fold x seed: what a rerun does not recompute
PREDICTIONS = "predictions.json"  # its held-out labels and scores (pooled AUC, ROC curves)
JSON_OUT, CSV_OUT, MD_OUT, PNG_OUT = "lopo.json", "lopo.csv", "lopo.md", "lopo.png"
MAX_COMBINATIONS = 20_000  # val-group subsets searched exhaustively; beyond: evenly spaced only


@dataclass(frozen=True)
class Group:
    """One group (patient or site): its patients and their labelled patches."""

    name: str
    patients: tuple[str, ...]
    patches: int
    positives: int

    @property
    def negatives(self) -> int:
        return self.patches - self.positives

    @property
    def fraction(self) -> float:
        return self.positives / max(1, self.patches)


@dataclass(frozen=True)
class Fold:
    """One fold x seed: what trains, what validates, what is held out."""

    fold_id: str  # "<held-out>-s<seed>", a folder name
    held_out: str
    seed: int
    val: tuple[str, ...]  # groups
    train: tuple[str, ...]  # groups

    @property
    def data_key(self) -> str:
        """The folder of the fold's dataset: one per held-out group, shared by its seeds."""
        return safe_name(self.held_out)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def safe_name(text: str) -> str:
    """A group name as a folder name (patients like ``10253`` or ``synth-p00`` stay as is)."""
    clean = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "group"
    if clean != text:  # two names cleaning to the same folder must not share it
        clean += "-" + hashlib.sha256(text.encode()).hexdigest()[:6]
    return clean


# --------------------------------------------------------------------------- groups


def patient_counts(dataset: PatchDataset) -> dict[str, tuple[int, int]]:
    """patient -> (labelled patches, tumour patches), over every labelled split; reads the
    two small columns only."""
    counts: dict[str, list[int]] = {}
    for split in sorted({s for s, _ in dataset.files()} - {"unlabelled"}):
        fs, paths = dataset.split_files(split)
        for path in paths:
            table = pq.read_table(path, columns=["patient_id", "label"], filesystem=fs)
            for patient, label in zip(table.column("patient_id").to_pylist(),
                                      table.column("label").to_pylist(), strict=True):
                if label is None:
                    continue
                c = counts.setdefault(patient, [0, 0])
                c[0] += 1
                c[1] += int(label == 1)
    return {p: (n, pos) for p, (n, pos) in sorted(counts.items())}


def group_of_patients(dataset: PatchDataset, patients: Iterable[str],
                      group_by: str) -> dict[str, str]:
    """patient -> group. ``site``: from the manifest's ``source.sites`` (patient -> site,
    written by :func:`write_combined`); a dataset without it is a ConfigError."""
    patients = list(patients)
    if group_by == "patient":
        return {p: p for p in patients}
    sites = dataset.manifest.source.get("sites")
    if not isinstance(sites, dict) or not sites:
        raise ConfigError(
            f"lopo.group_by=site: {dataset.root}/{MANIFEST} records no sites (source.sites: "
            "patient -> site, as a combined dataset writes); use lopo.group_by=patient")
    missing = sorted(set(patients) - set(sites))
    if missing:
        raise ConfigError(f"lopo.group_by=site: patients without a site in "
                          f"{dataset.root}/{MANIFEST} source.sites: {', '.join(missing[:10])}")
    return {p: str(sites[p]) for p in patients}


def make_groups(counts: Mapping[str, tuple[int, int]],
                group_of: Mapping[str, str]) -> dict[str, Group]:
    members: dict[str, list[str]] = {}
    for p in sorted(counts):
        members.setdefault(group_of[p], []).append(p)
    return {g: Group(g, tuple(ps), sum(counts[p][0] for p in ps), sum(counts[p][1] for p in ps))
            for g, ps in sorted(members.items())}


# --------------------------------------------------------------------------- planning


def _both_classes(groups: Sequence[Group]) -> bool:
    return sum(g.positives for g in groups) > 0 and sum(g.negatives for g in groups) > 0


def choose_val_groups(remaining: Sequence[Group], k: int, *, held_out: str,
                      candidates: Sequence[str] = ()) -> tuple[str, ...]:
    """``k`` of ``remaining`` (of ``candidates`` among them, when given) to validate,
    deterministically (no seed): val and train must each hold both classes; among the
    subsets that do, the one whose tumour fraction is closest to the remaining groups'
    pooled fraction (stratified), then the smallest in patches (more left to train on),
    then by name."""
    if k >= len(remaining):
        raise ConfigError(
            f"lopo.val_groups={k}: holding out {held_out!r} leaves {len(remaining)} group(s), "
            f"so none would train; lower lopo.val_groups (at most {len(remaining) - 1})")
    pooled = sum(g.positives for g in remaining) / max(1, sum(g.patches for g in remaining))
    eligible = [g for g in remaining if not candidates or g.name in candidates]
    if len(eligible) < k:
        raise ConfigError(f"holding out {held_out!r}: lopo.val_candidates leave "
                          f"{len(eligible)} group(s) to validate, lopo.val_groups={k} needed")
    ranked = sorted(eligible, key=lambda g: (g.fraction, g.name))
    n_subsets = math.comb(len(ranked), k)
    if n_subsets <= MAX_COMBINATIONS:
        subsets: Iterable[tuple[Group, ...]] = itertools.combinations(ranked, k)
    else:  # too many to search: evenly spaced positions along the tumour-fraction order
        step = len(ranked) / k
        subsets = [tuple(ranked[int((i + 0.5) * step)] for i in range(k))]
    best: tuple[Any, ...] | None = None
    for val in subsets:
        train = [g for g in remaining if g not in val]
        if not (_both_classes(val) and _both_classes(train)):
            continue
        frac = sum(g.positives for g in val) / max(1, sum(g.patches for g in val))
        key = (round(abs(frac - pooled), 9), sum(g.patches for g in val),
               tuple(sorted(g.name for g in val)))
        if best is None or key < best:
            best = key
    if best is None:
        described = ", ".join(f"{g.name} ({g.positives}/{g.patches} tumour)" for g in ranked)
        raise ConfigError(
            f"holding out {held_out!r}: no {k} of the remaining groups give a validation set "
            f"with both classes while training keeps both ({described}); change "
            "lopo.val_groups or lopo.hold_out")
    return best[2]


def plan_folds(groups: Mapping[str, Group], lopo: LopoConfig) -> list[Fold]:
    """Every fold x seed: each held-out group once per seed, its val groups chosen among
    the others (:func:`choose_val_groups`); bad requests are ConfigErrors naming the field."""
    if len(groups) < 3:
        raise ConfigError(
            f"leave-one-out needs at least 3 groups (one held out, one to validate, one to "
            f"train); the dataset has {len(groups)}: {', '.join(groups) or 'none'}")
    unknown = [g for g in [*lopo.hold_out, *lopo.val_candidates] if g not in groups]
    if unknown:
        raise ConfigError(f"lopo.hold_out / val_candidates: {', '.join(unknown)} not in the "
                          f"dataset (groups "
                          f"by {lopo.group_by}: {', '.join(list(groups)[:20])})")
    held = list(lopo.hold_out) or list(groups)
    folds = []
    for name in held:
        g = groups[name]
        if g.positives == 0 or g.negatives == 0:
            raise ConfigError(
                f"lopo.hold_out: {name!r} has {g.positives} tumour and {g.negatives} benign "
                "patches; a held-out group needs both (AUC, sensitivity and specificity); "
                "list the groups to hold out in lopo.hold_out")
        remaining = [groups[o] for o in groups if o != name]
        val = choose_val_groups(remaining, lopo.val_groups, held_out=name,
                                candidates=lopo.val_candidates)
        train = tuple(o.name for o in remaining if o.name not in val)
        for seed in lopo.seeds:
            folds.append(Fold(f"{safe_name(name)}-s{seed}", name, seed, val, train))
    return folds


# --------------------------------------------------------------------------- fold datasets


def fold_split_of(fold: Fold, groups: Mapping[str, Group]) -> dict[str, str]:
    """patient -> split of a fold's dataset."""
    out = {}
    for split, names in (("train", fold.train), ("val", fold.val), ("test", (fold.held_out,))):
        for name in names:
            for p in groups[name].patients:
                out[p] = split
    return out


def write_rows(root: str, rows_by_split: Iterable[tuple[str, Iterable[dict[str, Any]]]], *,
               encoding: str, manifest: dict[str, Any], rows_per_file: int = 2000,
               views: Sequence[str] = ()) -> Any:
    """Write records (already encoded rows of a patchray dataset) to a dataset at ``root``
    with ingest's writer: whole files, patient-disjoint check, manifest last."""
    from patchray.data.ingest import SplitWriter, begin_dataset, finish_dataset
    from patchray.data.records import ALL_SPLITS, SPLITS, patch_schema

    begin_dataset(root)
    digest = hashlib.sha256()
    schema = patch_schema(tuple(views))
    writers = {s: SplitWriter(root, s, rows_per_file, digest, schema) for s in ALL_SPLITS}
    for split, rows in rows_by_split:
        for row in rows:
            writers[split].add(row)
    finished = {s: w.finish() for s, w in writers.items()}
    splits = {s: v for s, v in finished.items() if s in SPLITS or v["rows"]}
    return finish_dataset(root, splits, {**manifest, "content_sha256": digest.hexdigest()},
                          encoding=encoding)


def _rows_of(dataset: PatchDataset, patients: set[str]) -> Iterable[dict[str, Any]]:
    """The labelled rows of ``patients``, in (patient, stored order)."""
    by_patient: dict[str, list[dict[str, Any]]] = {}
    for split in sorted({s for s, _ in dataset.files()} - {"unlabelled"}):
        fs, paths = dataset.split_files(split)
        for path in paths:
            for row in pq.read_table(path, filesystem=fs).to_pylist():
                if row["patient_id"] in patients and row["label"] is not None:
                    by_patient.setdefault(row["patient_id"], []).append(row)
    for p in sorted(by_patient):
        yield from by_patient[p]


def materialise_fold(dataset: PatchDataset, fold: Fold, groups: Mapping[str, Group],
                     root: str) -> PatchDataset:
    """The fold's dataset at ``root`` (train / val / test re-assigned); kept when it is
    already there for the same source content and assignment."""
    split_of = fold_split_of(fold, groups)
    rule = {"by": "lopo", "held_out": fold.held_out, "val_groups": list(fold.val),
            "train_groups": list(fold.train), "source": dataset.root,
            "source_sha256": dataset.content_sha256}
    if storage.exists(storage.join(root, MANIFEST)):
        existing = PatchDataset.open(root)
        if existing.manifest.split_rule == rule:
            return existing
    by_split: dict[str, list[dict[str, Any]]] = {"train": [], "val": [], "test": []}
    for row in _rows_of(dataset, set(split_of)):
        by_split[split_of[row["patient_id"]]].append(row)
    manifest = {"dataset": dataset.manifest.dataset, "source": dataset.manifest.source,
                "split_rule": rule, "class_names": dataset.manifest.class_names}
    if dataset.views:
        manifest.update(views=list(dataset.views), context_scale=dataset.manifest.context_scale)
    write_rows(root, by_split.items(), encoding=dataset.encoding, manifest=manifest,
               views=dataset.views)
    return PatchDataset.open(root)


def write_combined(parts: Mapping[str, PatchDataset], root: str, *,
                   rows_per_file: int = 2000) -> PatchDataset:
    """Several ingested datasets as one (all rows in train: LOPO re-splits them), the part
    each patient came from recorded as its site (``source.sites``). Patient ids must not
    collide across parts, and the encodings must agree."""
    encodings = {name: ds.encoding for name, ds in parts.items()}
    if len(set(encodings.values())) != 1:
        raise DataError(f"cannot combine datasets of different encodings: {encodings}")
    sites: dict[str, str] = {}
    for name, ds in parts.items():
        for p in patient_counts(ds):
            if p in sites:
                raise DataError(f"patient {p!r} is in both {sites[p]!r} and {name!r}: ids "
                                "must not collide in a combined dataset")
            sites[p] = name
    source = {"kind": "combined", "parts": {n: ds.root for n, ds in parts.items()},
              "part_sha256": {n: ds.content_sha256 for n, ds in parts.items()},
              "sites": dict(sorted(sites.items()))}
    if storage.exists(storage.join(root, MANIFEST)):
        existing = PatchDataset.open(root)
        if existing.manifest.source == source:
            return existing
    first = next(iter(parts.values()))
    rows = itertools.chain.from_iterable(_rows_of(ds, set(patient_counts(ds)))
                                         for ds in parts.values())
    write_rows(root, [("train", rows)], encoding=first.encoding, rows_per_file=rows_per_file,
               manifest={"dataset": "combined", "source": source,
                         "split_rule": {"by": "none (all train; re-split by lopo)"},
                         "class_names": first.manifest.class_names})
    return PatchDataset.open(root)


# --------------------------------------------------------------------------- results


def fold_result(fold: Fold, groups: Mapping[str, Group], *, y_test: Any, p_test: Any,
                threshold: float, target: float, val_auc: float | None, best_epoch: int,
                val_n: int, rule: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One fold x seed's row: the held-out group's metrics at the val-chosen threshold."""
    from patchray.evaluation.metrics import binary_metrics

    m = binary_metrics(y_test, p_test, threshold).to_dict()
    return {
        "fold": fold.fold_id, "held_out": fold.held_out, "seed": fold.seed,
        "held_out_patients": list(groups[fold.held_out].patients),
        "n": m["n"], "positives": m["positives"], "auc": m["auc"],
        "sensitivity": m["sensitivity"], "specificity": m["specificity"],
        "threshold": float(threshold), "target_sensitivity": target,
        "meets_target": bool(m["sensitivity"] is not None and m["sensitivity"] >= target),
        "val_groups": list(fold.val),
        "val_patients": sorted(p for g in fold.val for p in groups[g].patients),
        "val_n": val_n, "val_auc": val_auc, "best_epoch": best_epoch,
        "train_groups": list(fold.train), "threshold_rule": dict(rule or {}),
    }


def _mean_sd(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    v = [float(x) for x in values if x is not None and not math.isnan(float(x))]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0


def aggregate(results: Sequence[Mapping[str, Any]],
              predictions: Mapping[str, tuple[Sequence[int], Sequence[float]]]) -> dict[str, Any]:
    """Pooled figures: mean +- sd over folds of AUC / sensitivity / specificity, the AUC of
    every held-out prediction pooled, and per held-out group the mean +- sd over seeds."""
    from patchray.evaluation.metrics import roc_auc

    pooled: dict[str, Any] = {"folds": len(results)}
    for key in ("auc", "sensitivity", "specificity"):
        pooled[f"{key}_mean"], pooled[f"{key}_sd"] = _mean_sd([r[key] for r in results])
    ys = [np.asarray(predictions[r["fold"]][0]) for r in results if r["fold"] in predictions]
    ps = [np.asarray(predictions[r["fold"]][1]) for r in results if r["fold"] in predictions]
    y = np.concatenate(ys) if ys else np.zeros(0)
    pooled["pooled_auc"] = (roc_auc(y, np.concatenate(ps))
                            if len(set(y.tolist())) == 2 else None)
    pooled["pooled_n"] = int(len(y))
    pooled["meets_target"] = sum(bool(r["meets_target"]) for r in results)
    per_group = {}
    for name in dict.fromkeys(r["held_out"] for r in results):
        rows = [r for r in results if r["held_out"] == name]
        entry: dict[str, Any] = {"seeds": [r["seed"] for r in rows], "n": rows[0]["n"],
                                 "positives": rows[0]["positives"]}
        for key in ("auc", "sensitivity", "specificity", "threshold"):
            entry[f"{key}_mean"], entry[f"{key}_sd"] = _mean_sd([r[key] for r in rows])
        per_group[name] = entry
    pooled["per_group"] = per_group
    return pooled


CSV_COLUMNS = ("fold", "held_out", "seed", "n", "positives", "auc", "sensitivity",
               "specificity", "threshold", "target_sensitivity", "meets_target", "val_auc",
               "best_epoch", "val_groups", "val_patients")


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    if isinstance(v, list | tuple):
        return " ".join(str(x) for x in v)
    return str(v)


def pm(mean: float | None, sd: float | None) -> str:
    return "-" if mean is None else f"{mean:.3f} +- {sd or 0.0:.3f}"


def to_markdown(results: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], *,
                target: float, title: str = "Leave-one-patient-out") -> str:
    head = ["held out", "seed", "patches (tumour)", "AUC", "sensitivity", "specificity",
            "threshold", "val groups", "best epoch"]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |",
             "|" + "---|" * len(head)]
    for r in results:
        lines.append("| " + " | ".join([
            str(r["held_out"]), str(r["seed"]), f"{r['n']} ({r['positives']})", _fmt(r["auc"]),
            _fmt(r["sensitivity"]), _fmt(r["specificity"]), _fmt(r["threshold"], 4),
            _fmt(r["val_groups"]), str(r["best_epoch"])]) + " |")
    s = summary
    lines += [
        "",
        f"Over {s['folds']} fold(s), mean +- sd: AUC {pm(s['auc_mean'], s['auc_sd'])}, "
        f"sensitivity {pm(s['sensitivity_mean'], s['sensitivity_sd'])}, specificity "
        f"{pm(s['specificity_mean'], s['specificity_sd'])}; AUC of all "
        f"{s['pooled_n']} held-out predictions pooled: {_fmt(s['pooled_auc'])}. "
        f"Sensitivity >= {target:g} at the val-chosen threshold in {s['meets_target']} of "
        f"{s['folds']} fold(s).",
        "",
        "Each threshold was chosen on the fold's val groups, never on the held-out one.",
    ]
    return "\n".join(lines) + "\n"


def plot_lopo(results: Sequence[Mapping[str, Any]],
              predictions: Mapping[str, tuple[Sequence[int], Sequence[float]]],
              path: str | Path, *, target: float, title: str = "Leave-one-patient-out") -> Path:
    """Left: one ROC per held-out group (a curve per seed, the fold's operating point
    marked); right: each group's sensitivity at its val-chosen threshold (seeds as dots,
    their mean as the bar) against the target line."""
    from matplotlib.figure import Figure

    from patchray.evaluation.metrics import binary_metrics, roc_curve

    fig = Figure(figsize=(11.5, 5.0), dpi=110)
    roc, sens = fig.subplots(1, 2)
    names = list(dict.fromkeys(r["held_out"] for r in results))
    colours = [f"C{i % 10}" for i in range(len(names))]
    for name, colour in zip(names, colours, strict=True):
        rows = [r for r in results if r["held_out"] == name]
        aucs = [r["auc"] for r in rows if r["auc"] is not None]
        label = f"{name} (AUC {np.mean(aucs):.3f}" + (f", {len(rows)} seeds)" if len(rows) > 1
                                                       else ")") if aucs else name
        for i, r in enumerate(rows):
            if r["fold"] not in predictions:
                continue
            y, p = (np.asarray(a) for a in predictions[r["fold"]])
            if len(set(y.tolist())) < 2:
                continue
            fpr, tpr, _ = roc_curve(y, p)
            roc.plot(fpr, tpr, color=colour, lw=1.5, alpha=0.8, label=label if i == 0 else None)
            m = binary_metrics(y, p, r["threshold"])
            roc.plot([1 - m.specificity], [m.sensitivity], "o", color=colour, ms=5)
    roc.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    roc.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="False positive rate (1 - specificity)",
            ylabel="Sensitivity", title="ROC per held-out group (dot: val threshold)")
    roc.legend(loc="lower right", fontsize=8)
    x = np.arange(len(names))
    means = []
    for i, name in enumerate(names):
        v = [r["sensitivity"] for r in results if r["held_out"] == name
             and r["sensitivity"] is not None]
        means.append(float(np.mean(v)) if v else 0.0)
        sens.plot([i] * len(v), v, "o", color="black", ms=4, zorder=3)
    sens.bar(x, means, color=colours, alpha=0.7)
    sens.axhline(target, color="red", ls="--", lw=1.2, label=f"target {target:g}")
    sens.set_xticks(x, names, rotation=30 if len(names) > 4 else 0, ha="right"
                    if len(names) > 4 else "center", fontsize=8)
    sens.set(ylim=(0, 1.05), ylabel="Sensitivity at the val-chosen threshold",
             title="Sensitivity per held-out group")
    sens.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def write_outputs(out: str | Path, results: Sequence[Mapping[str, Any]],
                  predictions: Mapping[str, tuple[Sequence[int], Sequence[float]]], *,
                  target: float, extra: Mapping[str, Any] | None = None,
                  title: str = "Leave-one-patient-out") -> dict[str, Path]:
    """lopo.json / .csv / .md / .png in ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results = sorted(results, key=lambda r: (str(r["held_out"]), r["seed"]))
    summary = aggregate(results, predictions)
    paths = {k: out / v for k, v in (("json", JSON_OUT), ("csv", CSV_OUT), ("md", MD_OUT),
                                       ("png", PNG_OUT))}
    paths["json"].write_text(json.dumps({**(extra or {}), "target_sensitivity": target,
                                         "summary": summary, "folds": list(results)},
                                        indent=2) + "\n")
    with paths["csv"].open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            w.writerow([_fmt(r.get(c), 6) if isinstance(r.get(c), float) else _fmt(r.get(c))
                        for c in CSV_COLUMNS])
    paths["md"].write_text(to_markdown(results, summary, target=target, title=title))
    plot_lopo(results, predictions, paths["png"], target=target, title=title)
    return paths


def read_fold(fold_dir: str | Path) -> tuple[dict[str, Any], tuple[list[int], list[float]]] | None:
    """A finished fold's result and predictions, or None when it has not finished."""
    d = Path(fold_dir)
    if not (d / RESULT).is_file() or not (d / PREDICTIONS).is_file():
        return None
    pred = json.loads((d / PREDICTIONS).read_text())
    return json.loads((d / RESULT).read_text()), (pred["y"], pred["p"])


def write_fold(fold_dir: str | Path, result: Mapping[str, Any], y: Any, p: Any) -> None:
    """Predictions first, the result last (its presence marks the fold finished)."""
    d = Path(fold_dir)
    d.mkdir(parents=True, exist_ok=True)
    storage.write_json(str(d / PREDICTIONS), {"y": [int(v) for v in y],
                                              "p": [float(v) for v in p]})
    storage.write_json(str(d / RESULT), dict(result))


def progress_line(result: Mapping[str, Any], done: int, total: int) -> str:
    return (f"fold {done}/{total} {result['fold']}: held out {result['held_out']} "
            f"({result['n']} patches, {result['positives']} tumour): AUC {_fmt(result['auc'])} "
            f"sensitivity {_fmt(result['sensitivity'])} specificity "
            f"{_fmt(result['specificity'])} at threshold {_fmt(result['threshold'], 4)} "
            f"(chosen on val {', '.join(result['val_groups'])})")
