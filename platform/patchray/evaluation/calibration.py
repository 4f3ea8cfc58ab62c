"""Calibration of the served probability: a monotone map fitted on validation scores so that
"p(tumour) = 0.3" means about 30 of 100 such patches are tumour.

Class-weighted training shifts the model's prior: its raw outputs rank patches well (AUC)
but their values do not mean what they say (the demo model put its 95%-sensitivity threshold
at 0.006). Each precision's scores are mapped by a :class:`Calibration` fitted on ITS
validation scores; the threshold is then chosen on the calibrated scale, and every path that
serves a probability (the predictor, so serving and slide prediction) applies the same map.

Fitting uses scipy / scikit-learn (imported inside the fitting functions); applying
(:meth:`Calibration.apply`) is numpy only, so the serving path stays light.

Methods (``p`` clipped to ``[EPS, 1 - EPS]`` before the logit):

- ``none``: the raw output.
- ``temperature``: ``sigmoid(logit(p) / T)``, one parameter, fitted by log-loss.
- ``platt``: ``sigmoid(a * logit(p) + b)``, logistic regression on ``logit(p)`` with Platt's
  (1999) smoothed targets, so perfectly separated validation scores still give finite
  parameters.
- ``isotonic``: scikit-learn's ``IsotonicRegression(out_of_bounds="clip")``, stored as its
  knots and applied with ``np.interp`` (what its ``predict`` does).

The default is ``platt`` (:data:`DEFAULT_METHOD`): class weighting moves the prior, i.e. adds
an offset to the logit, which ``temperature`` (a pure scale, it keeps 0.5 at 0.5) cannot
undo; ``isotonic`` has as many free steps as it likes, overfits a few hundred validation
patches and maps whole ranges of scores to one value (ties: the AUC and the threshold choice
then change). Platt's two parameters fix the offset and the scale, and it is strictly
increasing (``a > 0``), so the ranking, the AUC and the ROC curve are unchanged.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Literal, get_args

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchray.errors import DataError

__all__ = [
    "CALIBRATION_METHODS",
    "DEFAULT_METHOD",
    "bin_counts",
    "ECE",
    "EPS",
    "Calibration",
    "CalibrationMethod",
    "ece_summary",
    "expected_calibration_error",
    "fit_calibration",
    "reliability",
]

log = logging.getLogger(__name__)

CalibrationMethod = Literal["none", "temperature", "platt", "isotonic"]
CALIBRATION_METHODS: tuple[str, ...] = get_args(CalibrationMethod)
# See the module docstring: class weighting shifts the prior (an offset temperature cannot
# fix); isotonic overfits a few hundred validation patches and creates ties.
DEFAULT_METHOD: CalibrationMethod = "platt"
EPS = 1e-12  # clip before the logit: small enough that float32 outputs keep their order
LOG_T_BOUNDS = (-7.0, 7.0)  # temperature search in log space: T in [1e-3, 1e3]


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1.0 - EPS)
    return np.log(q) - np.log1p(-q)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow for large |z| (unlike 1/(1+exp(-z)))


class ECE(BaseModel):
    """Expected calibration error of one split, before and after calibration."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    before: float
    after: float
    n: int


class Calibration(BaseModel):
    """A fitted map from the model's raw probability to a calibrated one (JSON-safe)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: CalibrationMethod
    temperature: float | None = Field(None, gt=0.0, description="temperature: logit / T")
    a: float | None = Field(None, description="platt: slope on logit(p)")
    b: float | None = Field(None, description="platt: intercept")
    x: list[float] = Field(default_factory=list, description="isotonic knots: raw p, ascending")
    y: list[float] = Field(default_factory=list, description="isotonic knots: calibrated p")
    fitted_on: str = Field("", description="which scores it was fitted on (e.g. val)")
    n: int = Field(0, ge=0, description="how many labelled scores it was fitted on")
    note: str = ""
    ece: dict[str, ECE] = Field(
        default_factory=dict,
        description="split -> expected calibration error before/after (10 equal-width bins)")

    @model_validator(mode="after")
    def _has_its_parameters(self) -> Calibration:
        m = self.method
        if m == "temperature" and self.temperature is None:
            raise ValueError("calibration method 'temperature' needs 'temperature' (> 0)")
        if m == "platt" and (self.a is None or self.b is None
                             or not (math.isfinite(self.a) and math.isfinite(self.b))):
            raise ValueError("calibration method 'platt' needs finite 'a' and 'b'")
        if m == "isotonic":
            if not self.x or len(self.x) != len(self.y):
                raise ValueError("calibration method 'isotonic' needs knots 'x' and 'y' of the "
                                 f"same non-zero length (got {len(self.x)} and {len(self.y)})")
            if np.any(np.diff(self.x) < 0) or np.any(np.diff(self.y) < 0):
                raise ValueError("isotonic knots 'x' and 'y' must be non-decreasing")
            if min(self.y) < 0.0 or max(self.y) > 1.0:
                raise ValueError("isotonic knots 'y' must be probabilities in [0, 1]")
        return self

    @property
    def identity(self) -> bool:
        return self.method == "none"

    def apply(self, p: Any) -> np.ndarray:
        """Raw probabilities (any shape) -> calibrated ones, float64, same shape. numpy only."""
        arr = np.asarray(p, dtype=np.float64)
        if self.method == "none":
            return arr.copy()
        if self.method == "temperature":
            return _sigmoid(_logit(arr) / float(self.temperature))  # type: ignore[arg-type]
        if self.method == "platt":
            return _sigmoid(float(self.a) * _logit(arr) + float(self.b))  # type: ignore[arg-type]
        # isotonic: np.interp clips outside the knots, as out_of_bounds="clip"
        return np.interp(arr, np.asarray(self.x), np.asarray(self.y))

    def describe(self) -> str:
        """One line for people: the method and its parameters."""
        if self.method == "temperature":
            return f"temperature T={self.temperature:.4g}"
        if self.method == "platt":
            return f"platt a={self.a:.4g} b={self.b:.4g}"
        if self.method == "isotonic":
            return f"isotonic ({len(self.x)} knots)"
        return "none (raw model output)" + (f": {self.note}" if self.note else "")


def _check(y: Any, p: Any) -> tuple[np.ndarray, np.ndarray]:
    yy = np.asarray(y).reshape(-1)
    pp = np.asarray(p, dtype=np.float64).reshape(-1)
    if yy.shape != pp.shape:
        raise DataError(f"calibration: {yy.size} labels but {pp.size} scores")
    if yy.size == 0:
        raise DataError("calibration: no labelled scores")
    if not np.isin(yy, (0, 1)).all():
        raise DataError("calibration: labels must be 0 (benign) or 1 (tumour)")
    if not np.isfinite(pp).all() or pp.min() < 0.0 or pp.max() > 1.0:
        raise DataError("calibration: scores must be finite probabilities in [0, 1]")
    return yy.astype(np.int64), pp


def _fit_temperature(y: np.ndarray, z: np.ndarray) -> float:
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        s = z / math.exp(log_t)
        # -log sigmoid(s) for tumour, -log(1 - sigmoid(s)) for benign, overflow-free
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -s, s))))

    res = minimize_scalar(nll, bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-6})
    return float(math.exp(res.x))


def _fit_platt(y: np.ndarray, z: np.ndarray) -> tuple[float, float]:
    from sklearn.linear_model import LogisticRegression

    pos = int(y.sum())
    neg = int(y.size - pos)
    # Platt's targets: (N+ + 1) / (N+ + 2) for tumour, 1 / (N- + 2) for benign, as soft labels
    # (each score twice, weighted by the target): finite parameters on separable scores.
    t = np.where(y == 1, (pos + 1.0) / (pos + 2.0), 1.0 / (neg + 2.0))
    # Standardised: an undertrained model's logits span ~0.005 around 0, where lbfgs stops
    # at its tolerance long before the (large) slope and returned a slope of the wrong sign.
    centre, scale = float(z.mean()), float(z.std())
    if not scale > 0.0:
        return 0.0, 0.0  # every score equal: no slope to fit (the caller falls back)
    zs = (z - centre) / scale
    X = np.concatenate([zs, zs])[:, None]
    labels = np.r_[np.ones(y.size, dtype=np.int64), np.zeros(y.size, dtype=np.int64)]
    weights = np.r_[t, 1.0 - t]
    model = LogisticRegression(C=np.inf, max_iter=1000, tol=1e-10)  # C=inf: no penalty
    model.fit(X, labels, sample_weight=weights)
    a_s, b_s = float(model.coef_[0, 0]), float(model.intercept_[0])
    return a_s / scale, b_s - a_s * centre / scale


def _fit_isotonic(y: np.ndarray, p: np.ndarray) -> tuple[list[float], list[float]]:
    from sklearn.isotonic import IsotonicRegression

    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    iso.fit(p, y.astype(np.float64))
    return [float(v) for v in iso.X_thresholds_], [float(v) for v in iso.y_thresholds_]


def fit_calibration(y: Any, p: Any, method: CalibrationMethod = DEFAULT_METHOD, *,
                    fitted_on: str = "val") -> Calibration:
    """Fit ``method`` on labels ``y`` (0/1) and raw probabilities ``p`` (validation).

    Needs both classes (else DataError). A Platt fit whose slope is not positive (a model no
    better than chance on these scores) would invert or flatten the ranking: it falls back
    to ``none`` and says so in ``note``."""
    if method not in CALIBRATION_METHODS:
        raise DataError(f"unknown calibration method {method!r}; valid: "
                        + ", ".join(repr(m) for m in CALIBRATION_METHODS))
    yy, pp = _check(y, p)
    common: dict[str, Any] = {"fitted_on": fitted_on, "n": int(yy.size)}
    if method == "none":
        return Calibration(method="none", **common)
    if yy.min() == yy.max():
        raise DataError(f"calibration needs both classes; all {yy.size} labels are "
                        f"{'tumour (1)' if yy[0] else 'benign (0)'}")
    if method == "temperature":
        return Calibration(method="temperature", temperature=_fit_temperature(yy, _logit(pp)),
                           **common)
    if method == "platt":
        a, b = _fit_platt(yy, _logit(pp))
        if not a > 0.0:
            log.warning("Platt calibration on %s: slope %.4g <= 0 (scores no better than "
                        "chance): serving raw probabilities", fitted_on, a)
            return Calibration(method="none", note=f"platt slope {a:.4g} <= 0 on {fitted_on}: "
                               "not applied", **common)
        return Calibration(method="platt", a=a, b=b, **common)
    x, knots = _fit_isotonic(yy, pp)
    return Calibration(method="isotonic", x=x, y=knots, **common)


def _bin_index(p: np.ndarray, bins: int) -> np.ndarray:
    # The binning of sklearn.calibration.calibration_curve(strategy="uniform"), so ECE and
    # the reliability diagram use the same bins: [0, 1/bins], (1/bins, 2/bins], ...
    edges = np.linspace(0.0, 1.0, bins + 1)
    return np.searchsorted(edges[1:-1], p)


def bin_counts(p: Any, bins: int = 10) -> np.ndarray:
    """How many scores fall in each of ``bins`` equal-width bins (the ECE's bins)."""
    pp = np.clip(np.asarray(p, dtype=np.float64).reshape(-1), 0.0, 1.0)
    return np.bincount(_bin_index(pp, bins), minlength=bins)


def expected_calibration_error(y: Any, p: Any, bins: int = 10) -> float:
    """ECE: ``sum_b (n_b / n) * |mean(y in b) - mean(p in b)|`` over ``bins`` EQUAL-WIDTH bins
    of [0, 1], each weighted by its share of the scores (empty bins count 0). Hand-written:
    neither scikit-learn nor scipy has it."""
    if bins < 1:
        raise DataError(f"bins must be >= 1, got {bins}")
    yy, pp = _check(y, p)
    idx = _bin_index(pp, bins)
    count = np.bincount(idx, minlength=bins).astype(np.float64)
    gap = np.abs(np.bincount(idx, weights=yy, minlength=bins)
                 - np.bincount(idx, weights=pp, minlength=bins))
    return float(gap.sum() / count.sum())


def reliability(y: Any, p: Any, bins: int = 10) -> dict[str, list[float]]:
    """Reliability-diagram data over equal-width bins (non-empty ones only):
    ``prob_pred`` (mean score), ``prob_true`` (tumour fraction) and ``count`` per bin, from
    :func:`sklearn.calibration.calibration_curve`."""
    from sklearn.calibration import calibration_curve

    yy, pp = _check(y, p)
    prob_true, prob_pred = calibration_curve(yy, pp, n_bins=bins, strategy="uniform")
    count = np.bincount(_bin_index(pp, bins), minlength=bins)
    return {"prob_pred": [float(v) for v in prob_pred],
            "prob_true": [float(v) for v in prob_true],
            "count": [int(c) for c in count[count > 0]]}


def ece_summary(y: Any, raw: Any, calibrated: Any, bins: int = 10) -> ECE:
    """ECE of one split before (raw) and after calibration."""
    return ECE(before=expected_calibration_error(y, raw, bins),
               after=expected_calibration_error(y, calibrated, bins), n=int(np.size(y)))
