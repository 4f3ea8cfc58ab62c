"""The evaluation stage: score val and test with the exported IRs (every precision in one
pass), fit each precision's calibration on its val scores, choose each threshold on the
CALIBRATED val scores, and write the report (metrics.json and the pictures).

The calibrated scores are computed as the predictor serves them (the map applied to the IR's
float32 output, the result rounded to float32), so a patch scored here and served later lands
on the same side of the threshold."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.config import EvalConfig
from patchray.data.manifest import PatchDataset
from patchray.evaluation.calibration import Calibration, ece_summary, fit_calibration
from patchray.evaluation.metrics import binary_metrics, choose_threshold, roc_auc
from patchray.evaluation.report import write_report
from patchray.evaluation.scoring import score_split
from patchray.inference.preprocess import Preprocess

log = logging.getLogger(__name__)
METRICS_FILE = "metrics.json"


@dataclass(frozen=True)
class Evaluation:
    threshold: float
    rule: dict[str, Any]  # rule, min_sensitivity, chosen_on
    metrics: dict[str, Any]  # what metrics.json holds

    def summary(self) -> dict[str, Any]:
        """val and test metrics: what the model's metadata carries."""
        return {k: self.metrics[k] for k in ("val", "test")}


@dataclass(frozen=True)
class Scored:
    """One model (IR + OpenVINO hint) scored on val and test, its threshold chosen on val.

    ``p_val``/``p_test`` are the served (calibrated) probabilities; ``p_val_raw``/
    ``p_test_raw`` the IR's raw output (the same arrays when there is no calibration)."""

    y_val: Any
    p_val: Any
    y_test: Any
    p_test: Any
    threshold: float
    rule: dict[str, Any]  # rule, min_sensitivity, chosen_on, scale
    calibration: Calibration | None = None
    p_val_raw: Any = None
    p_test_raw: Any = None

    @property
    def raw_val(self) -> Any:
        return self.p_val if self.p_val_raw is None else self.p_val_raw

    @property
    def raw_test(self) -> Any:
        return self.p_test if self.p_test_raw is None else self.p_test_raw

    @property
    def val(self) -> dict[str, Any]:
        return _metrics(self.y_val, self.p_val, self.p_val_raw, self.threshold)

    @property
    def test(self) -> dict[str, Any]:
        return _metrics(self.y_test, self.p_test, self.p_test_raw, self.threshold)


def _metrics(y: Any, p: Any, raw: Any, threshold: float) -> dict[str, Any]:
    """Metrics at the threshold on the served scores; the AUC of the raw ones: calibration is
    monotone, but a steep map rounded to float32 ties the top scores, moving the AUC alone."""
    m = binary_metrics(y, p, threshold).to_dict()
    if raw is not None and m["auc"] is not None:
        m["auc"] = roc_auc(y, raw)
    return m


def served_scores(calibration: Calibration | None, raw: Any) -> np.ndarray:
    """What the predictor serves for these raw outputs: calibrated, rounded to float32 (as
    :meth:`PatchPredictor.predict_arrays` returns), as float64 for the metrics."""
    p = np.asarray(raw, dtype=np.float32)
    if calibration is not None:
        p = calibration.apply(p).astype(np.float32)
    return p.astype(np.float64)


def calibrate_and_threshold(y_val: Any, p_val: Any, y_test: Any, p_test: Any,
                            rules: EvalConfig, *, chosen_on: str = "val") -> Scored:
    """One precision's raw val and test scores -> its calibration (fitted on val), the
    calibrated scores, and the threshold chosen on the calibrated val scores by ``rules``."""
    calibration = fit_calibration(y_val, p_val, rules.calibration, fitted_on=chosen_on)
    cal_val, cal_test = served_scores(calibration, p_val), served_scores(calibration, p_test)
    calibration = calibration.model_copy(update={"ece": {
        "val": ece_summary(y_val, p_val, cal_val), "test": ece_summary(y_test, p_test, cal_test)}})
    threshold = choose_threshold(y_val, cal_val, rule=rules.threshold_rule,
                                 min_sensitivity=rules.min_sensitivity)
    scale = ("raw model output" if calibration.identity
             else f"calibrated probability ({calibration.method})")
    rule = {"rule": rules.threshold_rule, "min_sensitivity": rules.min_sensitivity,
            "chosen_on": chosen_on, "scale": scale}
    return Scored(y_val, cal_val, y_test, cal_test, threshold, rule, calibration,
                  np.asarray(p_val, dtype=np.float64), np.asarray(p_test, dtype=np.float64))


def score_and_threshold(
    models: Mapping[str, tuple[str | Path, str]], preprocess: Preprocess,
    dataset: PatchDataset, rules: EvalConfig, *, val_holdout: float = 0.0,
) -> dict[str, Scored]:
    """Score val and test with every model (``name -> (IR xml, inference precision hint)``)
    in one Ray Data pass per split; fit each one's calibration on ITS val scores and choose
    its threshold on the calibrated val scores by ``rules`` (every precision gets its own,
    by the same rule)."""
    y_val, p_val = score_split(models, preprocess, dataset, "val", val_holdout=val_holdout)
    y_test, p_test = score_split(models, preprocess, dataset, "test")
    chosen_on = (f"val: {val_holdout:.0%} of the train patients' patches held out (optimistic)"
                 if val_holdout else "val")
    return {name: calibrate_and_threshold(y_val, p_val[name], y_test, p_test[name], rules,
                                          chosen_on=chosen_on)
            for name in models}


def calibration_metrics(scored: Scored) -> dict[str, Any]:
    """metrics.json's ``calibration``: the method, its parameters, ECE before/after."""
    cal = scored.calibration
    if cal is None:
        return {"method": "none"}
    return cal.model_dump(mode="json")


def evaluate_model(
    scored: Scored, rules: EvalConfig, *, report_dir: str | Path,
    history: list[dict[str, Any]], best_epoch: int,
    workers: list[dict[str, Any]] | None = None,
) -> Evaluation:
    """The f32 model's report: val and test at its threshold, metrics.json, the pictures.
    ``workers``: the training workers (rank, node id), recorded as they are."""
    threshold, rule = scored.threshold, scored.rule
    metrics: dict[str, Any] = {
        "val": scored.val,
        "test": scored.test,
        # The epoch of the checkpoint exported (Ray Train's best by val AUC, not the last).
        "best_epoch": best_epoch,
        "history": history,
        "threshold": {"value": threshold, **rule},
        "calibration": calibration_metrics(scored),
    }
    if workers:
        metrics["workers"] = workers
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    method = scored.calibration.method if scored.calibration else "none"
    pictures = write_report(report, y_true=scored.y_test, y_score=scored.p_test,
                            threshold=threshold, history=history, prefix="test",
                            y_score_raw=scored.raw_test, calibration=method)
    # test's under their names, val's as val_<name> (they used to overwrite test's here)
    pictures.update({f"val_{k}": v for k, v in write_report(
        report, y_true=scored.y_val, y_score=scored.p_val, threshold=threshold, prefix="val",
        y_score_raw=scored.raw_val, calibration=method).items()})
    metrics["pictures"] = {k: os.path.relpath(v, report) for k, v in pictures.items()}
    (report / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    test = metrics["test"]
    log.info("TEST AUC %.4f  sensitivity %.3f  specificity %.3f  at threshold %.4f (rule '%s' "
             "on %s, min_sensitivity %s, %s)", test["auc"], test["sensitivity"],
             test["specificity"], threshold, rules.threshold_rule, rule["chosen_on"],
             rules.min_sensitivity, rule.get("scale", "raw model output"))
    if scored.calibration is not None and scored.calibration.ece:
        ece = scored.calibration.ece
        log.info("calibration %s: ECE val %.4f -> %.4f, test %.4f -> %.4f",
                 scored.calibration.describe(), ece["val"].before, ece["val"].after,
                 ece["test"].before, ece["test"].after)
    return Evaluation(threshold, rule, metrics)
