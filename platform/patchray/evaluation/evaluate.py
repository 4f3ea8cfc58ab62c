"""The evaluation stage: score val and test with the exported IRs (every precision in one
pass), choose each threshold on val, and write the report (metrics.json and the pictures)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
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
    models: Mapping[str, tuple[str | Path, str]], preprocess: Preprocess,
    dataset: PatchDataset, rules: EvalConfig, *, val_holdout: float = 0.0,
) -> dict[str, Scored]:
    """Score val and test with every model (``name -> (IR xml, inference precision hint)``)
    in one Ray Data pass per split; choose each one's threshold on val by ``rules`` (every
    precision gets its own, by the same rule)."""
    y_val, p_val = score_split(models, preprocess, dataset, "val", val_holdout=val_holdout)
    y_test, p_test = score_split(models, preprocess, dataset, "test")
    chosen_on = (f"val: {val_holdout:.0%} of the train patients' patches held out (optimistic)"
                 if val_holdout else "val")
    rule = {"rule": rules.threshold_rule, "min_sensitivity": rules.min_sensitivity,
            "chosen_on": chosen_on}
    return {name: Scored(y_val, p_val[name], y_test, p_test[name],
                         choose_threshold(y_val, p_val[name], rule=rules.threshold_rule,
                                          min_sensitivity=rules.min_sensitivity), rule)
            for name in models}


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
    }
    if workers:
        metrics["workers"] = workers
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
