"""Metrics for binary tumour (1) vs benign (0) classifiers, and the decision threshold.

Pure, vectorised numpy (no sklearn): 300k scores take milliseconds. Every function accepts
lists or arrays for ``y_true`` (0/1 labels; bools and 0.0/1.0 floats are fine) and ``y_score``
(finite scores, higher = more likely tumour; usually probabilities). Shapes ``(n,)`` and
``(n, 1)`` (a Keras ``predict`` output) are both accepted. Invalid input raises
:class:`patchray.errors.DataError` naming what is wrong.

A patch is predicted tumour iff ``score >= threshold``, everywhere in this module.

Sensitivity matters most here (a missed tumour costs more than a second look), so the default
threshold rule, ``choose_threshold(rule="sensitivity")``, picks the highest threshold that
still finds at least ``min_sensitivity`` of the tumour patches.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, get_args

import numpy as np

from patchray.errors import DataError

__all__ = [
    "BCE_EPS",
    "BinaryMetrics",
    "THRESHOLD_RULES",
    "ThresholdRule",
    "average_precision",
    "binary_metrics",
    "choose_threshold",
    "precision_recall_curve",
    "roc_auc",
    "roc_curve",
]

BCE_EPS = 1e-7
"""Probabilities are clipped to ``[BCE_EPS, 1 - BCE_EPS]`` before the cross-entropy (as Keras)."""

ThresholdRule = Literal["sensitivity", "youden"]
THRESHOLD_RULES: tuple[str, ...] = get_args(ThresholdRule)


# --------------------------------------------------------------------------- validation


def _as_1d(values: Any, name: str, dtype: Any = None) -> np.ndarray:
    try:
        arr = np.asarray(values) if dtype is None else np.asarray(values, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be a 1-D sequence of numbers ({e})") from e
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise DataError(f"{name} must be 1-D (or shape (n, 1)), got shape {arr.shape}")
    return arr


def _labels(y_true: Any) -> np.ndarray:
    """``y_true`` as an int64 array of 0/1, or DataError naming the offending values."""
    arr = _as_1d(y_true, "y_true")
    if arr.dtype.kind in "USO":  # keep a stray string from turning every label into a string
        arr = _as_1d(y_true, "y_true", dtype=object)
    if arr.dtype == bool:
        return arr.astype(np.int64)
    if arr.dtype.kind in "iuf":
        ok = (arr == 0) | (arr == 1)
    else:  # strings, objects, ...: compare element-wise, nothing but 0/1 is accepted
        ok = np.array([_is_binary_label(v) for v in arr.tolist()], dtype=bool)
    if not ok.all():
        bad = arr[~ok]
        shown = _unique_repr(np.unique(bad) if arr.dtype.kind in "iuf" else bad)
        raise DataError(
            f"y_true must contain only 0 (benign) and 1 (tumour); found {bad.size} other "
            f"value(s): {shown}"
        )
    return arr.astype(np.int64)


def _is_binary_label(v: Any) -> bool:
    return isinstance(v, (bool, int, float, np.integer, np.floating, np.bool_)) and v in (0, 1)


def _unique_repr(bad: np.ndarray, limit: int = 5) -> str:
    try:
        uniq = list(dict.fromkeys(bad.tolist()))  # keeps first-seen order, handles objects
    except TypeError:  # unhashable entries
        uniq = bad.tolist()
    shown = ", ".join(repr(v) for v in uniq[:limit])
    return shown + (f", ... ({len(uniq) - limit} more distinct)" if len(uniq) > limit else "")


def _scores(y_score: Any) -> np.ndarray:
    arr = _as_1d(y_score, "y_score", dtype=np.float64)
    finite = np.isfinite(arr)
    if not finite.all():
        bad = np.flatnonzero(~finite)
        raise DataError(
            f"y_score must be finite; {bad.size} value(s) are NaN or infinite "
            f"(first at index {int(bad[0])}: {float(arr[bad[0]])})"
        )
    return arr


def _check_inputs(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _labels(y_true)
    s = _scores(y_score)
    if y.shape[0] != s.shape[0]:
        raise DataError(
            f"y_true and y_score must have the same length, got {y.shape[0]} labels and "
            f"{s.shape[0]} scores"
        )
    if y.shape[0] == 0:
        raise DataError("y_true and y_score are empty; need at least one labelled score")
    return y, s


def _require_both_classes(y: np.ndarray, what: str) -> tuple[int, int]:
    pos = int(y.sum())
    neg = int(y.shape[0] - pos)
    if pos == 0 or neg == 0:
        only = "benign (0)" if pos == 0 else "tumour (1)"
        raise DataError(
            f"{what} needs both classes in y_true, but all {y.shape[0]} labels are {only}"
        )
    return pos, neg


def _require_positives(y: np.ndarray, what: str) -> int:
    pos = int(y.sum())
    if pos == 0:
        raise DataError(
            f"{what} needs at least one tumour (1) label in y_true, but all {y.shape[0]} "
            "labels are benign (0)"
        )
    return pos


def _check_threshold(threshold: Any) -> float:
    try:
        t = float(threshold)
    except (TypeError, ValueError) as e:
        raise DataError(f"threshold must be a number, got {threshold!r}") from e
    if not math.isfinite(t):
        raise DataError(f"threshold must be finite, got {threshold!r}")
    return t


# --------------------------------------------------------------------------- curves


def _binary_clf_curve(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative (fps, tps) at each distinct score, thresholds descending (as sklearn)."""
    order = np.argsort(-s, kind="mergesort")
    s_sorted = s[order]
    y_sorted = y[order]
    # last index of each run of equal scores: predicting positive iff score >= that score
    distinct = np.flatnonzero(np.diff(s_sorted))
    idx = np.r_[distinct, s_sorted.size - 1]
    tps = np.cumsum(y_sorted)[idx]
    fps = idx + 1 - tps
    return fps, tps, s_sorted[idx]


def roc_auc(y_true: Any, y_score: Any) -> float:
    """Area under the ROC curve: P(score of a random tumour > score of a random benign).

    Rank-based (Mann-Whitney U) with average ranks for ties, so a tied pair counts 1/2.
    Equal to the trapezoidal area under :func:`roc_curve`. 1.0 = perfect, 0.5 = chance,
    0.0 = perfectly inverted. Raises DataError unless both classes are present.
    """
    y, s = _check_inputs(y_true, y_score)
    pos, neg = _require_both_classes(y, "roc_auc")
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)  # 1-based rank of the last member of each tie group
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum_pos = float(avg_rank[inverse][y == 1].sum())
    u = rank_sum_pos - pos * (pos + 1) / 2.0
    return float(u / (pos * neg))


def roc_curve(y_true: Any, y_score: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ROC points ``(fpr, tpr, thresholds)``, one per distinct score, thresholds descending.

    Like ``sklearn.metrics.roc_curve(..., drop_intermediate=False)``: ``thresholds[0]`` is
    ``+inf`` (nothing predicted tumour, the point (0, 0)) and ``thresholds[i]`` gives
    ``fpr[i]``/``tpr[i]`` when predicting tumour iff ``score >= thresholds[i]``.
    Raises DataError unless both classes are present.
    """
    y, s = _check_inputs(y_true, y_score)
    pos, neg = _require_both_classes(y, "roc_curve")
    fps, tps, thresholds = _binary_clf_curve(y, s)
    fpr = np.r_[0.0, fps / neg]
    tpr = np.r_[0.0, tps / pos]
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(
    y_true: Any, y_score: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Precision-recall points ``(precision, recall, thresholds)``, as sklearn (>= 1.1).

    ``thresholds`` are the distinct scores, ascending; ``precision[i]``/``recall[i]`` belong
    to predicting tumour iff ``score >= thresholds[i]``. The last point (precision 1,
    recall 0) has no threshold, so ``len(precision) == len(recall) == len(thresholds) + 1``.
    Needs at least one tumour label (benign labels are optional).
    """
    y, s = _check_inputs(y_true, y_score)
    pos = _require_positives(y, "precision_recall_curve")
    fps, tps, thresholds = _binary_clf_curve(y, s)
    precision = tps / (tps + fps)  # tps + fps >= 1 at every distinct score
    recall = tps / pos
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def average_precision(y_true: Any, y_score: Any) -> float:
    """Average precision: sum over thresholds of (recall step) x precision (no interpolation).

    Same definition as ``sklearn.metrics.average_precision_score``. Equals the tumour
    prevalence for an uninformative classifier and 1.0 for a perfect one.
    """
    precision, recall, _ = precision_recall_curve(y_true, y_score)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


# --------------------------------------------------------------------------- metrics at a threshold


def _ratio(num: float, den: float) -> float:
    return num / den if den else math.nan


@dataclass(frozen=True)
class BinaryMetrics:
    """Confusion matrix and derived metrics at one threshold (tumour iff score >= threshold).

    Undefined ratios are ``nan`` here and ``None`` in :meth:`to_dict` (e.g. ``precision``
    when nothing is predicted tumour, ``sensitivity`` without tumour labels, ``auc`` with a
    single class, ``loss`` when scores are not probabilities in [0, 1]).
    """

    threshold: float
    n: int
    positives: int
    tp: int
    fp: int
    tn: int
    fn: int
    sensitivity: float  # recall, true positive rate: tp / (tp + fn)
    specificity: float  # true negative rate: tn / (tn + fp)
    precision: float  # positive predictive value: tp / (tp + fp)
    f1: float
    accuracy: float
    balanced_accuracy: float  # (sensitivity + specificity) / 2
    auc: float  # ROC AUC (threshold-free)
    loss: float  # mean binary cross-entropy, probabilities clipped to [1e-7, 1 - 1e-7]

    @property
    def negatives(self) -> int:
        return self.n - self.positives

    def to_dict(self) -> dict[str, int | float | None]:
        """Plain Python ints/floats, ``None`` for undefined values: safe for ``json.dumps``."""
        out: dict[str, int | float | None] = {}
        for key, value in asdict(self).items():
            if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                out[key] = int(value)
            else:
                f = float(value)
                out[key] = f if math.isfinite(f) else None
        return out


def binary_metrics(y_true: Any, y_score: Any, threshold: float) -> BinaryMetrics:
    """Confusion matrix and metrics when predicting tumour iff ``score >= threshold``.

    Works with a single class present (then the undefined metrics are nan, see
    :class:`BinaryMetrics`).
    """
    y, s = _check_inputs(y_true, y_score)
    t = _check_threshold(threshold)
    pred = s >= t
    truth = y == 1
    n = int(y.shape[0])
    positives = int(truth.sum())
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = positives - tp
    tn = n - positives - fp

    sensitivity = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    f1 = _ratio(2 * tp, 2 * tp + fp + fn)
    balanced = (sensitivity + specificity) / 2.0  # nan if either is

    auc = roc_auc(y, s) if 0 < positives < n else math.nan
    if s.min() >= 0.0 and s.max() <= 1.0:
        p = np.clip(s, BCE_EPS, 1.0 - BCE_EPS)
        loss = float(-np.mean(np.where(truth, np.log(p), np.log1p(-p))))
    else:
        loss = math.nan

    return BinaryMetrics(
        threshold=t,
        n=n,
        positives=positives,
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        sensitivity=sensitivity,
        specificity=specificity,
        precision=precision,
        f1=f1,
        accuracy=(tp + tn) / n,
        balanced_accuracy=balanced,
        auc=auc,
        loss=loss,
    )


# --------------------------------------------------------------------------- threshold


def choose_threshold(
    y_true: Any,
    y_score: Any,
    rule: ThresholdRule = "sensitivity",
    min_sensitivity: float = 0.95,
) -> float:
    """Pick the decision threshold (an observed score; tumour iff ``score >= threshold``).

    ``rule="sensitivity"`` (default): the HIGHEST observed score whose sensitivity is
    ``>= min_sensitivity``, i.e. the best specificity among thresholds that miss at most
    ``1 - min_sensitivity`` of the tumours. Always exists (the lowest score has
    sensitivity 1). Needs tumour labels; benign labels are optional.

    ``rule="youden"``: the observed score maximising Youden's J = TPR - FPR
    (= sensitivity + specificity - 1); ties go to the higher threshold. Needs both classes.

    For probability scores the result is a finite float in [0, 1].
    """
    if rule not in THRESHOLD_RULES:
        raise DataError(
            f"unknown threshold rule {rule!r}; valid rules are: "
            + ", ".join(repr(r) for r in THRESHOLD_RULES)
        )
    y, s = _check_inputs(y_true, y_score)

    if rule == "sensitivity":
        try:
            target = float(min_sensitivity)
        except (TypeError, ValueError) as e:
            raise DataError(f"min_sensitivity must be a number in [0, 1], got {min_sensitivity!r}") from e
        if not 0.0 <= target <= 1.0:
            raise DataError(f"min_sensitivity must be in [0, 1], got {min_sensitivity!r}")
        pos = _require_positives(y, "choose_threshold(rule='sensitivity')")
        _, tps, thresholds = _binary_clf_curve(y, s)
        # tps is non-decreasing as thresholds descend; the last entry has sensitivity 1
        meets = tps / pos >= target
        return float(thresholds[int(np.argmax(meets))])

    # youden: compare J * pos * neg = tps * neg - fps * pos in exact integers, so that
    # mathematically equal J values tie and the first (highest) threshold wins
    pos, neg = _require_both_classes(y, "choose_threshold(rule='youden')")
    fps, tps, thresholds = _binary_clf_curve(y, s)
    j_scaled = tps.astype(np.int64) * neg - fps.astype(np.int64) * pos
    return float(thresholds[int(np.argmax(j_scaled))])
