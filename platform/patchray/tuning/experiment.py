"""Build, or restore, and run the Ray Tune experiment of a ``patchray tune`` job.

The experiment lives at ``<exp_dir>/tune`` (Tune's state) and ``<exp_dir>/trials`` (each
trial's Ray Train run). Running the same job again after its driver died restores the
experiment (``Tuner.restore``): finished trials stay finished, paused and interrupted ones
continue from their own checkpoints.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.schedulers import HyperBandScheduler

from patchray.config import TrainJobConfig, TuneConfig, TuneJobConfig
from patchray.data.manifest import PatchDataset
from patchray.errors import TrainingError
from patchray.tuning.plan import SLOT, TrialPlan, plan_trials
from patchray.tuning.progress import DecisionLog
from patchray.tuning.results import TuneSummary, collect, write_results
from patchray.tuning.space import param_space
from patchray.tuning.trial import METRIC, TIME_ATTR, run_trial

log = logging.getLogger(__name__)

EXPERIMENT = "tune"
#: Seconds between saves of Tune's experiment state (Tune's "auto" waits >= 10 s): what a
#: restarted driver loses at most.
STATE_SAVE_S = "2"


@dataclass(frozen=True)
class ExperimentPaths:
    root: Path

    @property
    def tune(self) -> Path:
        return self.root / EXPERIMENT

    @property
    def trials(self) -> Path:
        return self.root / "trials"

    @property
    def results(self) -> Path:
        return self.root / "results"


class AggressiveFirstHyperBand(HyperBandScheduler):
    """Ray's synchronous ``HyperBandScheduler``, its brackets in Hyperband's own order.

    Li et al. (Algorithm 1) and Keras Tuner run a band's brackets from the most aggressive
    (many trials, first rung at 1 epoch) to the one that never stops a trial; Ray 2.60 fills
    them the other way round. A search smaller than a whole band (17 trials for max_t 9,
    eta 3) would then spend its budget on full-length trials first. Ray creates bracket
    ``s`` for the ``s``-th bracket of a band (``_create_bracket``, a private hook:
    tests/unit/tuning/test_experiment.py pins it), so this maps ``s`` to ``s_max - s``.
    """

    def __init__(self, *, max_t: int, reduction_factor: int, **kwargs: Any) -> None:
        super().__init__(time_attr=TIME_ATTR, max_t=max_t, reduction_factor=reduction_factor,
                         stop_last_trials=True, **kwargs)
        # Bracket s starts at max_t / eta^s epochs, which must stay >= 1.
        ratio = math.log(max_t) / math.log(reduction_factor)
        self.widest = min(round(ratio), math.floor(ratio + 1e-9))

    def _create_bracket(self, s: int) -> Any:
        return super()._create_bracket(max(0, self.widest - s))

    # Restoring an experiment (Tuner.restore) builds a fresh scheduler, Ray Tune saves none,
    # and adds every trial to it again, finished ones included. A finished trial in a bracket
    # never reports again, so its bracket would wait for it forever: keep those out, and let
    # the unfinished trials form new brackets.
    def on_trial_add(self, tune_controller: Any, trial: Any) -> None:
        if trial.status in ("TERMINATED", "ERROR"):
            return
        super().on_trial_add(tune_controller, trial)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if trial not in self._trial_info:
            return self.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_remove(self, tune_controller: Any, trial: Any) -> None:
        if trial in self._trial_info:
            super().on_trial_remove(tune_controller, trial)


def make_scheduler(t: TuneConfig) -> Any:
    """Synchronous Hyperband (the published comparison's), ASHA, or none (random search)."""
    from ray.tune.schedulers import AsyncHyperBandScheduler, FIFOScheduler

    if t.scheduler == "hyperband":
        return AggressiveFirstHyperBand(max_t=t.max_t, reduction_factor=t.reduction_factor)
    if t.scheduler == "asha":
        return AsyncHyperBandScheduler(time_attr=TIME_ATTR, max_t=t.max_t,
                                       grace_period=t.grace_period,
                                       reduction_factor=t.reduction_factor)
    return FIFOScheduler()


def trainable(cfg: TuneJobConfig, dataset: PatchDataset, paths: ExperimentPaths,
              plan: TrialPlan, cluster_slots: float) -> Any:
    from ray import tune

    fn = tune.with_parameters(
        run_trial, base=cfg.model_dump(mode="json", exclude={"tune"}), dataset=dataset,
        trials_root=str(paths.trials), workers=plan.workers_per_trial, epochs=cfg.tune.max_t,
    )
    return tune.with_resources(fn, plan.trial_resources(cluster_slots))


def build_tuner(cfg: TuneJobConfig, dataset: PatchDataset, paths: ExperimentPaths,
                plan: TrialPlan, *, cluster_slots: float, scheduler: Any = None) -> tuple[Any, bool]:
    """The Tuner for this job and whether it was restored from an earlier driver's state.

    ``cluster_slots``: the cluster's :data:`~patchray.tuning.plan.SLOT` resource; a joined
    cluster without any falls back to Tune's ``max_concurrent_trials`` (which counts paused
    trials as running, so synchronous Hyperband's brackets run emptier)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", STATE_SAVE_S)  # read by the controller
    fn = trainable(cfg, dataset, paths, plan, cluster_slots)
    if tune.Tuner.can_restore(str(paths.tune)):
        log.info("restoring the experiment at %s: finished trials are kept, the others "
                 "continue from their checkpoints", paths.tune)
        return tune.Tuner.restore(str(paths.tune), trainable=fn, resume_unfinished=True,
                                  resume_errored=True), True
    t = cfg.tune
    tuner = tune.Tuner(
        fn,
        param_space=param_space(t.space),
        tune_config=tune.TuneConfig(
            metric=METRIC, mode="max", num_samples=t.num_samples,
            scheduler=scheduler or make_scheduler(t),
            search_alg=BasicVariantGenerator(random_state=t.seed),
            max_concurrent_trials=None if cluster_slots > 0 else plan.concurrent_trials,
            # Trial folders named by id only: short, and the id is what every line shows.
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=str(paths.root),
            callbacks=[DecisionLog(t.max_t, str(paths.trials))],
            verbose=0,  # patchray's DecisionLog prints the decisions instead of Tune's tables
        ),
    )
    return tuner, False


@dataclass(frozen=True)
class Search:
    summary: TuneSummary
    plan: TrialPlan
    best_spec: TrainJobConfig
    restored: bool


def cluster_plan(cfg: TuneJobConfig) -> tuple[TrialPlan, float]:
    """The trial layout for the Ray cluster this process is connected to, and the
    cluster's trial slots (:data:`~patchray.tuning.plan.SLOT`)."""
    import ray

    # What is free now, not the cluster's size: on a shared cluster, other jobs' actors
    # (a Serve deployment, say) keep their CPUs for the whole experiment.
    free = ray.available_resources()
    plan = plan_trials(free.get("CPU", 0.0), free.get("GPU", 0.0), cfg.train,
                       cfg.tune.resources, cfg.tune.num_samples)
    slots = ray.cluster_resources().get(SLOT, 0.0)
    if not slots:
        log.warning("the Ray cluster declares no %r resource (ray start --resources "
                    "'{\"%s\": 1}'): falling back to max_concurrent_trials, which counts paused "
                    "trials as running", SLOT, SLOT)
    if plan.concurrent_trials * (plan.workers_per_trial * plan.cpus_per_worker) > (
        plan.cluster_cpus - plan.data_cpus
    ):
        log.warning("tune.resources.max_concurrent_trials=%d leaves Ray Data fewer than "
                    "%g CPUs: trials may stall waiting for data", plan.concurrent_trials,
                    plan.data_cpus)
    return plan, slots


def run_experiment(cfg: TuneJobConfig, dataset: PatchDataset, paths: ExperimentPaths, *,
                   scheduler: Any = None) -> Search:
    """Run (or restore and finish) the search on the connected Ray cluster and write its
    results under ``paths.results``. ``scheduler``: a Ray Tune scheduler instead of the one
    ``tune.scheduler`` names."""
    plan, slots = cluster_plan(cfg)
    log.info("%s search, %d trials of up to %d epochs: %s", cfg.tune.scheduler,
             cfg.tune.num_samples, cfg.tune.max_t, plan.describe())
    tuner, restored = build_tuner(cfg, dataset, paths, plan, cluster_slots=slots,
                                  scheduler=scheduler)
    summary = collect(tuner.fit(), paths.trials, cfg.tune.max_t, cfg.tune.scheduler)
    if not any(r.history for r in summary.records):
        first = next((r for r in summary.records if r.error), None)
        raise TrainingError(
            f"all {len(summary.records)} trials failed before their first epoch"
            + (f"; trial {first.trial_id}: {first.error}" if first else "")
            + " (tracebacks in the log file)")
    spec = write_results(cfg, summary, paths.results)
    (paths.results / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    return Search(summary, plan, spec, restored)
