"""Report pictures: ROC, precision-recall, confusion matrix, reliability (calibration) and
learning curves (PNG).

Drawn with ``matplotlib.figure.Figure`` on an Agg canvas: no pyplot, no global backend
switch, no GUI, safe in Ray workers and threads. matplotlib is imported inside the functions,
so importing this module stays cheap. Each function creates the parent folder of ``path``
and returns the written :class:`~pathlib.Path`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from patchray.errors import DataError
from patchray.evaluation.metrics import (
    BinaryMetrics,
    average_precision,
    binary_metrics,
    precision_recall_curve,
    roc_auc,
    roc_curve,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "DPI",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_precision_recall",
    "plot_reliability",
    "plot_roc",
    "write_report",
]

DPI = 110
_CURVE_COLOR = "tab:blue"
_POINT_COLOR = "tab:red"


def _new_figure(width: float, height: float) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _save(fig: Figure, path: str | os.PathLike[str]) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to fig
    fig.savefig(out, dpi=DPI, format="png")
    return out


def _mark_operating_point(ax: Any, x: float, y: float, label: str) -> None:
    ax.plot(x, y, "o", color=_POINT_COLOR, ms=8, zorder=5, label=label)


def _finish_unit_axes(ax: Any, xlabel: str, ylabel: str, title: str, legend_loc: str) -> None:
    """Square [0, 1] axes with labels, grid and legend (ROC and precision-recall)."""
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=9)


def plot_roc(
    y_true: Any,
    y_score: Any,
    path: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    title: str = "ROC",
) -> Path:
    """ROC curve with the chance diagonal, AUC in the legend and the operating point of
    ``threshold`` (if given) marked. Needs both classes (DataError otherwise)."""
    fpr, tpr, _ = roc_curve(y_true, y_score)
    auc = roc_auc(y_true, y_score)
    fig = _new_figure(5.6, 5.4)
    ax = fig.add_subplot()
    ax.plot(fpr, tpr, color=_CURVE_COLOR, lw=2, label=f"ROC (AUC = {auc:.3f})")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="chance (AUC = 0.5)")
    if threshold is not None:
        m = binary_metrics(y_true, y_score, threshold)
        _mark_operating_point(
            ax, 1.0 - m.specificity, m.sensitivity,
            f"threshold {m.threshold:.3g}: sensitivity {m.sensitivity:.3f}, "
            f"specificity {m.specificity:.3f}",
        )
    _finish_unit_axes(ax, "False positive rate (1 - specificity)",
                      "True positive rate (sensitivity)", title, "lower right")
    return _save(fig, path)


def plot_precision_recall(
    y_true: Any,
    y_score: Any,
    path: str | os.PathLike[str],
    *,
    threshold: float | None = None,
    title: str = "Precision-recall",
) -> Path:
    """Precision-recall curve with average precision in the legend, the tumour prevalence
    (an uninformative classifier) as a baseline, and the operating point of ``threshold``."""
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    ap = average_precision(y_true, y_score)
    m = binary_metrics(y_true, y_score, 0.5 if threshold is None else threshold)
    prevalence = m.positives / m.n
    fig = _new_figure(5.6, 5.4)
    ax = fig.add_subplot()
    ax.step(recall, precision, where="post", color=_CURVE_COLOR, lw=2,
            label=f"precision-recall (AP = {ap:.3f})")
    ax.axhline(prevalence, color="grey", ls="--", lw=1,
               label=f"chance (tumour prevalence = {prevalence:.3f})")
    if threshold is not None and math.isfinite(m.precision):
        # precision is undefined when nothing is predicted tumour: no point to mark
        _mark_operating_point(
            ax, m.sensitivity, m.precision,
            f"threshold {m.threshold:.3g}: recall {m.sensitivity:.3f}, "
            f"precision {m.precision:.3f}",
        )
    _finish_unit_axes(ax, "Recall (sensitivity)", "Precision (positive predictive value)",
                      title, "lower left")
    return _save(fig, path)


def plot_reliability(
    y_true: Any,
    y_score_raw: Any,
    y_score: Any,
    path: str | os.PathLike[str],
    *,
    method: str = "calibrated",
    title: str = "Reliability",
    bins: int = 10,
) -> Path:
    """Reliability diagram: the tumour fraction against the mean predicted probability per
    equal-width bin, before (raw model output) and after calibration, each with its ECE
    (expected calibration error, bins weighted by their share of patches) in the legend; the
    diagonal is perfect calibration. Below, how many patches fall in each bin."""
    from patchray.evaluation.calibration import (
        bin_counts,
        expected_calibration_error,
        reliability,
    )

    fig = _new_figure(5.6, 6.6)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", ls="--", lw=1, label="perfectly calibrated")
    edges = np.linspace(0.0, 1.0, bins + 1)
    width = 1.0 / bins
    series = [("raw model output", y_score_raw, "tab:orange", -0.2),
              (f"calibrated ({method})", y_score, _CURVE_COLOR, 0.2)]
    for label, scores, color, offset in series:
        r = reliability(y_true, scores, bins)
        ece = expected_calibration_error(y_true, scores, bins)
        top.plot(r["prob_pred"], r["prob_true"], marker="o", ms=5, lw=1.8, color=color,
                 label=f"{label} (ECE = {ece:.3f})")
        counts = bin_counts(scores, bins)
        bottom.bar(edges[:-1] + width * (0.5 + offset), counts, width=0.4 * width,
                   color=color, alpha=0.8)
    top.set_xlim(-0.01, 1.01)
    top.set_ylim(-0.01, 1.01)
    top.set_ylabel("Fraction of tumour patches")
    top.set_title(title)
    top.grid(alpha=0.3)
    top.legend(loc="upper left", fontsize=9)
    bottom.set_yscale("symlog")
    bottom.set_xlabel(f"Predicted probability of tumour ({bins} equal-width bins)")
    bottom.set_ylabel("Patches")
    bottom.grid(alpha=0.3)
    return _save(fig, path)


def plot_confusion_matrix(
    metrics: BinaryMetrics,
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] = ("benign", "tumour"),
) -> Path:
    """2x2 confusion matrix (rows = true class, columns = predicted), each cell annotated
    with its count and its percentage of the row; cells shaded by that percentage."""
    if len(class_names) != 2:
        raise DataError(f"class_names must name 2 classes (0, 1), got {list(class_names)!r}")
    counts = np.array([[metrics.tn, metrics.fp], [metrics.fn, metrics.tp]], dtype=np.int64)
    row_totals = counts.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        row_frac = np.where(row_totals > 0, counts / np.maximum(row_totals, 1), np.nan)
    fig = _new_figure(5.2, 4.6)
    ax = fig.add_subplot()
    im = ax.imshow(np.nan_to_num(row_frac), cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(2):
        for j in range(2):
            frac = row_frac[i, j]
            pct = "n/a" if math.isnan(frac) else f"{100 * frac:.1f}%"
            ax.text(
                j, i, f"{counts[i, j]:,}\n({pct})",
                ha="center", va="center", fontsize=12,
                color="white" if (not math.isnan(frac) and frac > 0.5) else "black",
            )
    names = [str(c) for c in class_names]
    ax.set_xticks([0, 1], labels=names)
    ax.set_yticks([0, 1], labels=[f"{names[0]}\n(n={row_totals[0, 0]:,})",
                                  f"{names[1]}\n(n={row_totals[1, 0]:,})"])
    ax.set_xlabel("Predicted class")
    ax.set_ylabel("True class")
    ax.set_title(f"Confusion matrix (threshold = {metrics.threshold:.3g})")
    cbar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cbar.set_label("Fraction of true class (row)")
    return _save(fig, path)


def _series(history: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    values = []
    for i, row in enumerate(history):
        v = row.get(key)
        if v is None:
            values.append(math.nan)
            continue
        try:
            values.append(float(v))
        except (TypeError, ValueError) as e:
            raise DataError(f"history[{i}][{key!r}] must be a number, got {v!r}") from e
    return np.asarray(values, dtype=np.float64)


def plot_learning_curves(
    history: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    keys: Sequence[str] = ("loss", "val_loss", "val_auc"),
) -> Path:
    """Metrics per epoch. ``history`` has one dict per epoch with ``"epoch"`` (else the
    1-based position is used) and metric keys. Keys containing ``"loss"`` go on the top
    axis; the others (AUC-like, 0..1) on a second axis below. Keys absent from every epoch
    are skipped; a key missing in some epochs leaves a gap."""
    if not history:
        raise DataError("plot_learning_curves needs a non-empty history (one dict per epoch)")
    for i, row in enumerate(history):
        if not isinstance(row, Mapping):
            raise DataError(f"history[{i}] must be a dict of metrics, got {type(row).__name__}")
    present = [k for k in keys if any(row.get(k) is not None for row in history)]
    if not present:
        available = sorted({k for row in history for k in row if k != "epoch"})
        raise DataError(
            f"none of the keys {list(keys)!r} are in the history; available keys: {available!r}"
        )
    if all("epoch" in row for row in history):
        epochs = _series(history, "epoch")
    else:
        epochs = np.arange(1, len(history) + 1, dtype=np.float64)

    loss_keys = [k for k in present if "loss" in k]
    other_keys = [k for k in present if "loss" not in k]
    groups = [g for g in (loss_keys, other_keys) if g]

    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(6.4, 3.0 + 2.2 * len(groups))
    axes = fig.subplots(len(groups), 1, sharex=True, squeeze=False)[:, 0]
    for ax, group in zip(axes, groups):
        all_values = []
        for key in group:
            values = _series(history, key)
            all_values.append(values)
            ax.plot(epochs, values, marker="o", ms=4, lw=1.8, label=key)
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=9)
        if group is loss_keys:
            ax.set_ylabel("Loss (binary cross-entropy)")
            ax.set_title("Loss per epoch")
        else:
            ax.set_ylabel("Metric value (0-1)")
            ax.set_title("Metrics per epoch")
            stacked = np.concatenate(all_values)
            finite = stacked[np.isfinite(stacked)]
            if finite.size and finite.min() >= 0.0 and finite.max() <= 1.0:
                ax.set_ylim(max(0.0, finite.min() - 0.05), 1.005)
    axes[-1].set_xlabel("Epoch")
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def write_report(
    out_dir: str | os.PathLike[str],
    *,
    y_true: Any,
    y_score: Any,
    threshold: float,
    history: Sequence[Mapping[str, Any]] | None = None,
    prefix: str = "test",
    y_score_raw: Any = None,
    calibration: str = "calibrated",
) -> dict[str, str]:
    """Write the evaluation pictures into ``out_dir`` and return ``{name: path}``.

    Names and files: ``"roc"`` -> ``{prefix}_roc.png``, ``"pr"`` -> ``{prefix}_pr.png``,
    ``"confusion"`` -> ``{prefix}_confusion.png``; with ``y_score_raw`` (the raw output
    ``y_score`` was calibrated from, method ``calibration``) ``"reliability"`` ->
    ``{prefix}_reliability.png``; and, if ``history`` is non-empty, ``"learning_curves"`` ->
    ``learning_curves.png``. Needs both classes in ``y_true``.
    """
    if not prefix or any(sep in prefix for sep in ("/", "\\", os.sep)):
        raise DataError(f"prefix must be a non-empty file-name prefix without '/', got {prefix!r}")
    out = Path(out_dir)
    split = prefix.replace("_", " ")
    metrics = binary_metrics(y_true, y_score, threshold)
    paths = {
        "roc": plot_roc(y_true, y_score, out / f"{prefix}_roc.png",
                        threshold=metrics.threshold, title=f"ROC ({split})"),
        "pr": plot_precision_recall(y_true, y_score, out / f"{prefix}_pr.png",
                                    threshold=metrics.threshold,
                                    title=f"Precision-recall ({split})"),
        "confusion": plot_confusion_matrix(metrics, out / f"{prefix}_confusion.png"),
    }
    if y_score_raw is not None:
        paths["reliability"] = plot_reliability(
            y_true, y_score_raw, y_score, out / f"{prefix}_reliability.png",
            method=calibration, title=f"Reliability ({split})")
    if history:
        paths["learning_curves"] = plot_learning_curves(history, out / "learning_curves.png")
    return {name: str(p) for name, p in paths.items()}
