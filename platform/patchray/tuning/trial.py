"""The Tune trainable: one trial is one run of ``patchray train``'s trainer.

Ray Train V2 holds the trial's checkpoints, not Tune: the trial's trainer is named after the
trial id, so when Hyperband pauses a trial (its actor, controller and workers die) and later
resumes it, the new trainer with the same ``(storage_path, name)`` resumes from the trial's
own latest checkpoint, and the epoch counter continues. Tune's ``training_iteration``
restarts at 1 on every resume, so schedulers use ``epochs_done`` from the workers' reports.
"""

from __future__ import annotations

from typing import Any

from patchray import storage
from patchray.config import TrainJobConfig
from patchray.data.manifest import PatchDataset
from patchray.tuning.space import trial_config

METRIC = "val_auc"
TIME_ATTR = "epochs_done"


#: Written into a trial's run folder by the driver when the trial ends (finished or stopped
#: by the scheduler). Tune saves its own experiment state only every few seconds, so a
#: restored experiment can list an ended trial as paused; the trial then sees this and does
#: not train again.
OUTCOME = "outcome.json"


def trial_run_name(trial_id: str) -> str:
    return f"trial-{trial_id}"


def record_outcome(trials_root: str, trial_id: str, outcome: str, epochs: int) -> None:
    storage.write_json(storage.join(trials_root, trial_run_name(trial_id), OUTCOME),
                       {"outcome": outcome, "epochs": epochs})


def recorded_outcome(trials_root: str, trial_id: str) -> dict[str, Any] | None:
    uri = storage.join(trials_root, trial_run_name(trial_id), OUTCOME)
    return storage.read_json(uri) if storage.exists(uri) else None


def final_report(meta: dict[str, Any]) -> dict[str, Any]:
    """The metrics a trial reports once its trainer returns, from its latest checkpoint's
    ``meta``: its last epoch's, plus its best val AUC so far (a restored experiment reads
    these for trials that had finished)."""
    history = meta["history"]
    last = dict(history[-1])
    best = max(h[METRIC] for h in history)
    return {**{k: v for k, v in last.items() if isinstance(v, (int, float))},
            TIME_ATTR: meta["epoch"] + 1, "best_val_auc": best}


def run_trial(params: dict[str, Any], *, base: dict[str, Any], dataset: PatchDataset,
              trials_root: str, workers: int, epochs: int) -> None:
    """Train one sampled point for up to ``epochs``, reporting every epoch to Tune."""
    from ray import tune
    from ray.tune.integration.ray_train import TuneReportCallback

    from patchray.training.trainer import build_trainer, fit, previous_result, read_meta

    trial_id = tune.get_context().get_trial_id()
    cfg = trial_config(TrainJobConfig.model_validate(base), params, epochs=epochs,
                       num_workers=workers)
    name = trial_run_name(trial_id)
    result = previous_result(trials_root, name)
    meta = read_meta(result.checkpoint) if result is not None else None
    ended = meta is not None and recorded_outcome(trials_root, trial_id) is not None
    if not ended and (meta is None or meta["epoch"] + 1 < epochs):
        trainer = build_trainer(cfg, dataset=dataset, storage_root=trials_root, run_name=name,
                                callbacks=[TuneReportCallback()], progress_label=trial_id)
        meta = read_meta(fit(trainer, dataset.root, storage.join(trials_root, name)).checkpoint)
    # Also when the trainer had nothing left to train (a restored experiment): Tune then
    # sees this trial's real final result, not the stale one from before the restart.
    tune.report(final_report(meta))
