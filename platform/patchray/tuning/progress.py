"""One terminal line per scheduler decision: a trial started, paused at a rung, promoted,
stopped early, finished or failed (trial id, epoch, val AUC, decision).

Tune's callbacks see results and status changes but not the scheduler's verdicts, so this
watches each trial's status after every step of the experiment loop and words the change.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.tune import Callback

from patchray.tuning.space import describe
from patchray.tuning.trial import METRIC, TIME_ATTR, record_outcome

log = logging.getLogger("patchray.tune")


def decision(before: str | None, after: str, epochs: int, max_t: int,
             was_paused: bool = False) -> str | None:
    """The words for a trial going from status ``before`` to ``after`` after ``epochs``."""
    if after == before:
        return None
    if after == "RUNNING":
        return "resumed from its own checkpoint (promoted)" if was_paused else "started"
    if after == "PAUSED":
        if epochs >= max_t:
            return "trained the full budget (waits for the rest of its bracket)"
        return "paused at its rung (waits for the rest of its bracket)"
    if after == "TERMINATED":
        return "finished the full budget" if epochs >= max_t else "stopped early"
    if after == "ERROR":
        return "failed (traceback in the log file)"
    return None


class DecisionLog(Callback):
    """Prints the decisions; records each trial's end in its run folder (see
    :data:`patchray.tuning.trial.OUTCOME`)."""

    def __init__(self, max_t: int, trials_root: str) -> None:
        self.max_t = max_t
        self.trials_root = trials_root
        self.status: dict[str, str] = {}
        self.best: dict[str, float] = {}
        self.paused: set[str] = set()

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict,
                        **info: Any) -> None:
        if METRIC in result:
            self.best[trial.trial_id] = max(self.best.get(trial.trial_id, 0.0), result[METRIC])

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        for trial in trials:
            before = self.status.get(trial.trial_id)
            self.status[trial.trial_id] = trial.status
            last = trial.last_result or {}
            epochs = int(last.get(TIME_ATTR, 0))
            words = decision(before, trial.status, epochs, self.max_t,
                             trial.trial_id in self.paused)
            if trial.status == "PAUSED":
                self.paused.add(trial.trial_id)
            if words is not None and trial.status == "TERMINATED" and epochs:
                record_outcome(self.trials_root, trial.trial_id, words, epochs)
            if words is None or (before is None and trial.status != "RUNNING"):
                continue  # PENDING on creation, or states restored with the experiment
            if words == "started":
                log.info("trial %s started: %s", trial.trial_id, describe(trial.config))
                continue
            auc = last.get(METRIC)
            shown = f"val_auc {auc:.4f}" if isinstance(auc, float) else "no val_auc yet"
            best = self.best.get(trial.trial_id)
            best_text = f" (best {best:.4f})" if best is not None and best != auc else ""
            log.info("trial %s epoch %d/%d %s%s: %s", trial.trial_id, epochs, self.max_t,
                     shown, best_text, words)
