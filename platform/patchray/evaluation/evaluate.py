"""The evaluation stage: score val and test with the exported IR, choose the threshold on
val, and write the report (metrics.json and the pictures)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray.config import EvalConfig
from patchray.data.manifest import PatchDataset
from patchray.evaluation.metrics import binary_metrics, choose_threshold
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
    """One model (IR + OpenVINO hint) scored on val and test, its threshold chosen on val."""

    y_val: Any
    p_val: Any
    y_test: Any
    p_test: Any
    threshold: float
    rule: dict[str, Any]  # rule, min_sensitivity, chosen_on

    @property
    def val(self) -> dict[str, Any]:
        return binary_metrics(self.y_val, self.p_val, self.threshold).to_dict()

    @property
    def test(self) -> dict[str, Any]:
        return binary_metrics(self.y_test, self.p_test, self.threshold).to_dict()


def score_and_threshold(
    model_xml: str | Path, preprocess: Preprocess, dataset: PatchDataset, rules: EvalConfig,
    *, val_holdout: float = 0.0, inference_precision: str = "f32",
) -> Scored:
    """Score val and test with the IR under ``inference_precision``; choose the threshold on
    val by ``rules`` (each precision gets its own, by the same rule)."""
    y_val, p_val = score_split(model_xml, preprocess, dataset, "val", val_holdout=val_holdout,
                               inference_precision=inference_precision)
    threshold = choose_threshold(y_val, p_val, rule=rules.threshold_rule,
                                 min_sensitivity=rules.min_sensitivity)
    y_test, p_test = score_split(model_xml, preprocess, dataset, "test",
                                 inference_precision=inference_precision)
    chosen_on = (f"val: {val_holdout:.0%} of the train patients' patches held out (optimistic)"
                 if val_holdout else "val")
    rule = {"rule": rules.threshold_rule, "min_sensitivity": rules.min_sensitivity,
            "chosen_on": chosen_on}
    return Scored(y_val, p_val, y_test, p_test, threshold, rule)


def evaluate_model(
    model_xml: str | Path, preprocess: Preprocess, dataset: PatchDataset, rules: EvalConfig,
    *, report_dir: str | Path, history: list[dict[str, Any]], best_epoch: int,
    val_holdout: float = 0.0,
) -> Evaluation:
    """Choose the f32 threshold on val by ``rules``, measure test at it, write the report."""
    scored = score_and_threshold(model_xml, preprocess, dataset, rules,
                                 val_holdout=val_holdout)
    threshold, rule = scored.threshold, scored.rule
    metrics: dict[str, Any] = {
        "val": scored.val,
        "test": scored.test,
        # The epoch of the checkpoint exported (Ray Train's best by val AUC, not the last).
        "best_epoch": best_epoch,
        "history": history,
        "threshold": {"value": threshold, **rule},
    }
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    pictures = write_report(report, y_true=scored.y_test, y_score=scored.p_test,
                            threshold=threshold, history=history, prefix="test")
    pictures.update(write_report(report, y_true=scored.y_val, y_score=scored.p_val,
                                 threshold=threshold, prefix="val"))
    metrics["pictures"] = {k: os.path.relpath(v, report) for k, v in pictures.items()}
    (report / METRICS_FILE).write_text(json.dumps(metrics, indent=2))
    test = metrics["test"]
    log.info("TEST AUC %.4f  sensitivity %.3f  specificity %.3f  at threshold %.4f (rule '%s' "
             "on %s, min_sensitivity %s)", test["auc"], test["sensitivity"],
             test["specificity"], threshold, rules.threshold_rule, rule["chosen_on"],
             rules.min_sensitivity)
    return Evaluation(threshold, rule, metrics)
