"""Leave-one-patient-out on a connected Ray cluster: the folds as parallel Ray Tune trials.

Folds (held-out group x seed) run in parallel as Ray Tune trials (a grid over fold ids),
laid out by :func:`patchray.tuning.plan.plan_trials` so Ray Data always keeps CPUs. Each
trial trains through ``patchray train``'s Ray Train path (:func:`run_training`), exports the
best checkpoint by val AUC (:func:`export_checkpoint`, behind the parity gate) and scores its
val groups and its held-out group with :func:`score_and_threshold`: the threshold is chosen
on val, the metrics are the held-out group's. Fold models are evaluation only: they are NOT
registered in the model registry. The plain logic is in :mod:`patchray.evaluation.lopo`.

Resume: a fold x seed whose ``result.json`` exists is not run again; an unfinished one
continues from its own Ray Train checkpoints (its run folder is fixed by its fold id).
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray.config import LopoJobConfig, TuneResources
from patchray.data.manifest import PatchDataset
from patchray.errors import TrainingError
from patchray.evaluation import lopo
from patchray.tuning.plan import SLOT, TrialPlan, plan_trials

log = logging.getLogger(__name__)
EXPERIMENT = "tune"


@dataclass(frozen=True)
class LopoResult:
    out_dir: Path
    results: list[dict[str, Any]]
    summary: dict[str, Any]
    outputs: dict[str, Path]
    plan: TrialPlan | None  # None: every fold had finished before


def fold_dir(out_dir: Path, fold: lopo.Fold) -> Path:
    return out_dir / "folds" / fold.data_key / f"seed-{fold.seed}"


def fold_data_dir(out_dir: Path, fold: lopo.Fold) -> Path:
    return out_dir / "folds" / fold.data_key / "data"


def fold_train_config(base: dict[str, Any], *, data_root: str, seed: int, workers: int,
                      target: float) -> Any:
    """The job config one fold trains with: its own dataset (with val patients, so no
    hold-out), its seed, its workers, the target sensitivity as eval.min_sensitivity."""
    from patchray.config import TrainJobConfig, set_path

    doc = {k: v for k, v in base.items() if k != "lopo"}
    for path, value in ((["data", "root"], data_root), (["data", "val_holdout"], 0.0),
                        (["train", "seed"], seed), (["train", "num_workers"], workers),
                        (["eval", "min_sensitivity"], target)):
        set_path(doc, path, value, what="lopo fold")
    return TrainJobConfig.model_validate(doc)


def run_fold(params: dict[str, Any], *, base: dict[str, Any], folds: dict[str, dict[str, Any]],
             groups: dict[str, dict[str, Any]], out_dir: str, workers: int,
             target: float) -> None:
    """The Tune trainable: train, export and score one fold x seed, write its result."""
    from ray import tune

    from patchray.evaluation.evaluate import score_and_threshold
    from patchray.export.openvino_export import export_checkpoint
    from patchray.training.trainer import run_training

    fold = lopo.Fold(**{**folds[params["fold"]], "val": tuple(folds[params["fold"]]["val"]),
                        "train": tuple(folds[params["fold"]]["train"])})
    group_map = {k: lopo.Group(**{**v, "patients": tuple(v["patients"])})
                 for k, v in groups.items()}
    out = Path(out_dir)
    here = fold_dir(out, fold)
    done = lopo.read_fold(here)
    if done is None:
        started = time.time()
        dataset = PatchDataset.open(str(fold_data_dir(out, fold)))
        cfg = fold_train_config(base, data_root=dataset.root, seed=fold.seed, workers=workers,
                                target=target)
        outcome = run_training(cfg, dataset=dataset, storage_root=str(here), run_name="train",
                               local_dir=str(here))
        build = here / "export"
        shutil.rmtree(build, ignore_errors=True)
        exported = export_checkpoint(outcome.best_checkpoint_dir, build, dataset,
                                     parity_atol=cfg.export.parity_atol)
        scored = score_and_threshold({"f32": (exported.model_xml, "f32")}, exported.preprocess,
                                     dataset, cfg.eval)["f32"]
        best = next((h for h in outcome.history if h["epoch"] == exported.epoch), {})
        result = lopo.fold_result(fold, group_map, y_test=scored.y_test, p_test=scored.p_test,
                                  threshold=scored.threshold, target=target,
                                  val_auc=scored.val.get("auc"), best_epoch=exported.epoch,
                                  val_n=int(len(scored.y_val)), rule=scored.rule)
        result["train_val_auc"] = best.get("val_auc")  # Keras's, at the chosen epoch
        result["started_s"], result["finished_s"] = started, time.time()  # epoch seconds
        lopo.write_fold(here, result, scored.y_test, scored.p_test)
        shutil.rmtree(build, ignore_errors=True)  # fold models are not kept or registered
        done = lopo.read_fold(here)
    assert done is not None
    r = done[0]
    tune.report({k: r[k] for k in ("auc", "sensitivity", "specificity", "threshold")
                 if isinstance(r[k], int | float)})


def _progress_callback(out_dir: Path, folds: dict[str, lopo.Fold], total: int,
                       already: int) -> Any:
    from ray.tune import Callback

    class FoldProgress(Callback):
        """A line per fold as it finishes (from its result file, so what it says is what
        lopo.json will hold)."""

        def __init__(self) -> None:
            self.done = already

        def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            fold = folds[trial.config["fold"]]
            got = lopo.read_fold(fold_dir(out_dir, fold))
            self.done += 1
            if got is not None:
                log.info("%s", lopo.progress_line(got[0], self.done, total))

        def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
            self.done += 1
            log.error("fold %d/%d %s failed (traceback in the log file)", self.done, total,
                      trial.config["fold"])

    return FoldProgress()


def run_folds(cfg: LopoJobConfig, pending: list[lopo.Fold], groups: dict[str, lopo.Group],
              out_dir: Path, total: int) -> TrialPlan:
    """The pending folds as parallel Tune trials on the connected cluster."""
    import ray
    from ray import tune

    free = ray.available_resources()
    plan = plan_trials(free.get("CPU", 0.0), free.get("GPU", 0.0), cfg.train,
                       TuneResources(max_concurrent_trials=cfg.lopo.max_concurrent_folds),
                       len(pending))
    slots = ray.cluster_resources().get(SLOT, 0.0)
    log.info("%d fold(s) to run: %s", len(pending), plan.describe())
    target = float(cfg.lopo.target_sensitivity or cfg.eval.min_sensitivity)
    fn = tune.with_parameters(
        run_fold, base=cfg.model_dump(mode="json"),
        folds={f.fold_id: f.to_dict() for f in pending},
        groups={k: {**vars(g), "patients": list(g.patients)} for k, g in groups.items()},
        out_dir=str(out_dir), workers=plan.workers_per_trial, target=target)
    state = out_dir / EXPERIMENT
    shutil.rmtree(state, ignore_errors=True)  # the result files are the record; a new grid
    tuner = tune.Tuner(
        tune.with_resources(fn, plan.trial_resources(slots)),
        param_space={"fold": tune.grid_search([f.fold_id for f in pending])},
        tune_config=tune.TuneConfig(
            max_concurrent_trials=None if slots > 0 else plan.concurrent_trials,
            trial_dirname_creator=lambda trial: trial.config["fold"]),
        run_config=tune.RunConfig(
            name=EXPERIMENT, storage_path=str(out_dir), verbose=0,
            callbacks=[_progress_callback(out_dir, {f.fold_id: f for f in pending}, total,
                                          total - len(pending))]),
    )
    grid = tuner.fit()
    errors = [r.error for r in grid if r.error is not None]
    if errors:
        log.error("%d of %d fold(s) failed; the others' results are kept (rerun to retry)",
                  len(errors), len(pending))
    return plan


def run_lopo(cfg: LopoJobConfig, dataset: PatchDataset, out_dir: Path) -> LopoResult:
    """Plan the folds of ``dataset``, materialise their datasets, run the unfinished ones in
    parallel on the connected cluster (its :data:`SLOT` resource throttles them), and write
    lopo.json / .csv / .md / .png in ``out_dir``."""
    counts = lopo.patient_counts(dataset)
    groups = lopo.make_groups(counts, lopo.group_of_patients(dataset, counts, cfg.lopo.group_by))
    folds = lopo.plan_folds(groups, cfg.lopo)
    for f in {f.data_key: f for f in folds}.values():  # one dataset per held-out group
        lopo.materialise_fold(dataset, f, groups, str(fold_data_dir(out_dir, f)))
    pending = [f for f in folds if lopo.read_fold(fold_dir(out_dir, f)) is None]
    for f in folds:
        if f not in pending:
            log.info("fold %s finished before: not run again", f.fold_id)
    plan = run_folds(cfg, pending, groups, out_dir, len(folds)) if pending else None
    results, predictions = [], {}
    for f in folds:
        got = lopo.read_fold(fold_dir(out_dir, f))
        if got is not None:
            results.append(got[0])
            predictions[f.fold_id] = got[1]
    if not results:
        raise TrainingError(f"no fold finished (the tracebacks are in the log; {out_dir})")
    target = float(cfg.lopo.target_sensitivity or cfg.eval.min_sensitivity)
    outputs = lopo.write_outputs(out_dir, results, predictions, target=target, extra={
        "dataset": dataset.root, "group_by": cfg.lopo.group_by,
        "model": cfg.train.model, "epochs": cfg.train.epochs, "seeds": cfg.lopo.seeds,
        "missing_folds": [f.fold_id for f in folds
                          if f.fold_id not in {r["fold"] for r in results}],
        "registered": False})
    summary = lopo.aggregate(results, predictions)
    for line in outputs["md"].read_text().splitlines():
        if line.strip():
            log.info("%s", line)
    log.info("wrote %s", ", ".join(str(p) for p in outputs.values()))
    if len(results) < len(folds):
        raise TrainingError(f"{len(folds) - len(results)} of {len(folds)} fold(s) failed; "
                            f"the table holds the {len(results)} that finished; rerun "
                            "the same command to retry the others")
    return LopoResult(out_dir, results, summary, outputs, plan)
