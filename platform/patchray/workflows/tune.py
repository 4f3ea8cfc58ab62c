"""``patchray tune``: a Hyperband search over the training of ``patchray train``.

    runs/<name>/
      config.yaml            the resolved job config
      logs/patchray.log      everything the job and Ray wrote
      tune/                  Ray Tune's experiment state (what a rerun restores)
      trials/trial-<id>/     each trial's Ray Train run: checkpoints, as in `patchray train`
      results/               trials.csv, trials.md, trial_curves.png, best.yaml, plan.json
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import runtime, storage
from patchray.config import TrainJobConfig, TuneJobConfig, dump_config
from patchray.errors import ConfigError
from patchray.tuning.experiment import ExperimentPaths, run_experiment
from patchray.tuning.plan import SLOT, TrialPlan
from patchray.tuning.results import BEST_SPEC, CURVES_PNG, TABLE_CSV, TuneSummary, table_rows, to_markdown
from patchray.workflows.train import TrainJobResult, open_or_make_dataset, run_dir_of, run_train_job

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TuneJobResult:
    paths: ExperimentPaths
    summary: TuneSummary
    plan: TrialPlan
    best_spec: TrainJobConfig
    restored: bool
    trained: TrainJobResult | None = None


def run_tune_job(cfg: TuneJobConfig, *, then_train: bool = False, scheduler: Any = None,
                 shutdown: bool = True) -> TuneJobResult:
    """Run (or resume) the search, write its results, and with ``then_train`` train the
    best point for the full budget, export and evaluate it like ``patchray train``.
    ``scheduler``: a Ray Tune scheduler instead of the one ``tune.scheduler`` names."""
    if not cfg.data.root:
        raise ConfigError("data.root is required for `patchray tune`: point it at an ingested "
                          "dataset (patchray ingest ... --out URI)")
    paths = ExperimentPaths(run_dir_of(cfg))
    paths.root.mkdir(parents=True, exist_ok=True)
    (paths.root / "config.yaml").write_text(dump_config(cfg))
    log.info("experiment directory: %s", paths.root)
    try:
        # A local cluster gets one trial slot, shared by the running trials (tuning.plan).
        runtime.init_ray(cfg.ray, resources=None if cfg.ray.address else {SLOT: 1.0})
        # Absolute: Tune runs each trial in a working folder of its own.
        root = cfg.data.root if storage.is_remote(cfg.data.root) else str(Path(cfg.data.root).resolve())
        dataset = open_or_make_dataset(cfg.data, root, synthetic=cfg.dataset == "synthetic")
        search = run_experiment(cfg, dataset, paths, scheduler=scheduler)
        report(search.summary, paths)
        trained = run_train_job(search.best_spec, shutdown=False) if then_train else None
        return TuneJobResult(paths, search.summary, search.plan, search.best_spec,
                             search.restored, trained)
    finally:
        if shutdown:
            runtime.shutdown()


def report(summary: TuneSummary, paths: ExperimentPaths) -> None:
    """The table (without the long checkpoint paths, which are in the CSV) and where
    everything is."""
    for line in to_markdown(table_rows(summary), drop=("checkpoint", "stopped_early")).splitlines():
        log.info("%s", line)
    best = summary.best
    log.info("best: trial %s, val AUC %.4f at epoch %d; %d epochs trained in all (every trial "
             "to the end: %d)", best.trial_id, best.best_auc, best.best_epoch,
             summary.total_epochs, len(summary.records) * summary.max_t)
    log.info("table: %s; curves: %s", paths.results / TABLE_CSV, paths.results / CURVES_PNG)
    log.info("best spec: %s  (patchray train --config %s)", paths.results / BEST_SPEC,
             paths.results / BEST_SPEC)
