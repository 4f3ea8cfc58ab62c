"""``patchray train``: train on an ingested dataset, export the best checkpoint, evaluate it,
register it.

    runs/<name>/
      config.yaml           the resolved job config
      logs/patchray.log     everything the job and Ray wrote (the CLI puts it there)
      train/                Ray Train run: checkpoints (best K by val AUC), replica digests
                            (in <train.storage>/<name>/train instead when train.storage is set)
      best_checkpoint/      the best checkpoint, local copy
      export/               IR files as built (f32, INT8), before registration
      model.json            pointer to the registered version (registry, name, version)
      report/               metrics.json, ROC / PR / confusion / learning-curve PNGs

The model itself lives in the registry (``registry.root``): ``models/<name>/<version>/``
with the IR files and the model card.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import __version__, runtime, storage
from patchray.config import DataConfig, TrainJobConfig, dump_config
from patchray.data.ingest import ingest_synthetic
from patchray.data.manifest import MANIFEST, PatchDataset
from patchray.errors import ConfigError, PatchrayError
from patchray.evaluation.evaluate import (
    METRICS_FILE,
    Evaluation,
    evaluate_model,
    score_and_threshold,
)
from patchray.export.openvino_export import ExportResult, export_checkpoint
from patchray.registry.card import IR_FILES, Evidence, ModelCard, PrecisionRecord
from patchray.registry.store import ModelRegistry, default_root

log = logging.getLogger(__name__)
POINTER = "model.json"  # the run's pointer to its registered model


@dataclass(frozen=True)
class TrainedModel:
    model_dir: Path  # a local folder of the registered version (IR files + card.json)
    metrics: dict[str, Any]
    card: ModelCard
    registry: str


@dataclass(frozen=True)
class TrainJobResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    card: ModelCard
    registry: str


def run_dir_of(cfg: TrainJobConfig) -> Path:
    """``<runs_root>/<name>``: a rerun of the same name resumes there."""
    return (Path(cfg.runs_root) / cfg.name).resolve()


def registry_of(cfg: TrainJobConfig) -> ModelRegistry:
    return ModelRegistry(cfg.registry.root or default_root(cfg.runs_root))


def open_or_make_dataset(data: DataConfig, root: str, *, synthetic: bool) -> PatchDataset:
    """Open the dataset at ``root``; a synthetic one that is not there yet is made first
    (through the same ingest path as real sources)."""
    if synthetic and not storage.exists(storage.join(root, MANIFEST)):
        log.info("making synthetic H&E patches at %s", root)
        ingest_synthetic(data, root, workers=os.cpu_count() or 1)
    dataset = PatchDataset.open(root)
    log.info("dataset %s (%s): %s", root, dataset.encoding, dataset.summary())
    return dataset


def train_export_evaluate(cfg: TrainJobConfig, dataset: PatchDataset,
                          run_dir: Path) -> TrainedModel:
    """Train (or resume), export the best checkpoint behind the parity gate, quantise it,
    measure every precision on val, and register the model with its card (written once)."""
    from patchray.training.loop import CHECKPOINT_META
    from patchray.training.trainer import run_training

    t = cfg.train
    log.info("training %s with Ray Train (%d workers, %d epochs)", t.model, t.num_workers,
             t.epochs)
    # On a multi-node cluster the workers write checkpoints from their own nodes: the run
    # must live where every node reaches (train.storage), not on the driver's disk.
    storage_root = (storage.join(storage.absolute(t.storage), cfg.name) if t.storage
                    else str(run_dir))
    outcome = run_training(cfg, dataset=dataset, storage_root=storage_root, run_name="train",
                           local_dir=str(run_dir))
    workers = list(outcome.workers)
    if workers:
        nodes = {w["node_id"] for w in workers}
        log.info("trained on %d worker%s on %d node%s", len(workers),
                 "" if len(workers) == 1 else "s", len(nodes), "" if len(nodes) == 1 else "s")
    registry = registry_of(cfg)
    meta = json.loads((Path(outcome.best_checkpoint_dir) / CHECKPOINT_META).read_text())
    earlier = registered_before(run_dir, registry, meta["weights_sha256"])
    if earlier is not None:
        return earlier

    build = run_dir / "export"
    shutil.rmtree(build, ignore_errors=True)  # an interrupted export's leftovers
    exported = export_checkpoint(outcome.best_checkpoint_dir, build, dataset,
                                 parity_atol=cfg.export.parity_atol,
                                 val_holdout=cfg.data.val_holdout)
    int8_error = quantize(cfg, dataset, exported, build) if "int8" in cfg.export.precisions \
        else None
    evaluation, records = evaluate_precisions(cfg, dataset, exported, build, int8_error,
                                              run_dir=run_dir, history=outcome.history,
                                              workers=workers)
    card = model_card(cfg, cfg.model_name(), dataset, exported, evaluation, records,
                      lineage={"run_dir": str(run_dir), "train_run": outcome.storage_uri,
                               "checkpoint_epoch": exported.epoch,
                               "weights_sha256": meta["weights_sha256"], "workers": workers})
    published = registry.register(build, card, alias=cfg.registry.alias or None)
    storage.write_json(str(run_dir / POINTER), {
        "registry": registry.root, "name": published.name, "version": published.version,
        "ref": published.ref, "weights_sha256": meta["weights_sha256"]})
    shutil.rmtree(build, ignore_errors=True)  # the registry holds the files now
    model_dir = registry.local_dir(published)
    log.info("registered %s in %s%s; report: %s", published.ref, registry.root,
             f" (alias {cfg.registry.alias})" if cfg.registry.alias else "",
             run_dir / "report")
    return TrainedModel(model_dir, evaluation.metrics, published, registry.root)


def registered_before(run_dir: Path, registry: ModelRegistry,
                      weights_sha256: str) -> TrainedModel | None:
    """The model this run registered from the same weights, if any: rerunning a finished
    job answers with it instead of registering a duplicate version."""
    pointer = run_dir / POINTER
    if not pointer.is_file():
        return None
    ref = json.loads(pointer.read_text())
    if ref.get("registry") != registry.root or ref.get("weights_sha256") != weights_sha256:
        return None
    try:
        card = registry.card(ref["name"], int(ref["version"]))
    except PatchrayError as e:
        log.info("this run's pointer %s names a model the registry lacks (%s): "
                 "registering again", pointer, e)
        return None
    metrics = json.loads((run_dir / "report" / METRICS_FILE).read_text())
    log.info("this run already registered %s from the same weights: nothing to export "
             "(report: %s)", card.ref, run_dir / "report")
    return TrainedModel(registry.local_dir(card), metrics, card, registry.root)


def _model_inputs(dataset: PatchDataset, exported: ExportResult, split: str, n: int) -> Any:
    rows = dataset.sample_rows(split, n, spread=True)
    # One array, or both views of a multi-scale model (NNCF calibrates every input).
    return exported.preprocess.row_inputs(rows, encoding=dataset.encoding)


def quantize(cfg: TrainJobConfig, dataset: PatchDataset, exported: ExportResult,
             build: Path) -> str | None:
    """Write the INT8 IR into ``build``; return why not when NNCF fails (the job goes on
    with the other precisions, and the card says why INT8 is missing)."""
    from patchray.evaluation.scoring import labelled_inputs
    from patchray.export.quantize import quantize_int8

    e = cfg.export
    calibration = _model_inputs(dataset, exported, "train", e.int8_calibration_patches)
    validation = (labelled_inputs(dataset, exported.preprocess, "val",
                                  val_holdout=cfg.data.val_holdout)
                  if e.int8_accuracy_control else None)
    log.info("quantising to INT8 with NNCF (%d training patches%s)", len(calibration),
             ", accuracy control on val" if validation is not None else "")
    try:
        quantize_int8(exported.model_xml, calibration, build / IR_FILES["int8"],
                      validation=validation, max_auc_drop=e.int8_max_auc_drop)
    except Exception as err:  # NNCF's own errors have no common base
        log.warning("INT8 quantisation failed: %s: %s", type(err).__name__, err)
        return f"NNCF quantisation failed: {type(err).__name__}: {err}"
    return None


def evaluate_precisions(cfg: TrainJobConfig, dataset: PatchDataset, exported: ExportResult,
                        build: Path, int8_error: str | None, *, run_dir: Path,
                        history: list[dict[str, Any]],
                        workers: list[dict[str, Any]] | None = None,
                        ) -> tuple[Evaluation, dict[str, PrecisionRecord]]:
    """Score every precision on val and test in one pass per split (the patches decoded
    once for all), write the f32 report, gate the others against it, and time them."""
    from patchray.export.precisions import (
        assess_precisions,
        candidates,
        fastest_passed,
        log_precisions,
        with_speeds,
    )

    run, missing = candidates(cfg.export, int8_error)
    scored = score_and_threshold({n: (build / c.file, c.hint) for n, c in run.items()},
                                 exported.preprocess, dataset, cfg.eval,
                                 val_holdout=cfg.data.val_holdout)
    evaluation = evaluate_model(scored["f32"], cfg.eval, report_dir=run_dir / "report",
                                history=history, best_epoch=exported.epoch, workers=workers)
    records = assess_precisions(scored, evaluation, cfg.export, missing)
    records = with_speeds(build, records, exported.sample)  # the parity gate's val patches
    log_precisions(records, fastest_passed(records))
    return evaluation, records


def code_revision() -> str:
    """``git describe`` of the code that ran (``-dirty`` with local changes), or unknown."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=12"],
                             cwd=Path(__file__).parent, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


def evidence(dataset: PatchDataset, val_holdout: float, val_patches: int) -> list[Evidence]:
    """The patients (and patch counts) each split's metrics come from."""
    out = []
    for split in ("train", "val", "test"):
        stored, held_out = dataset.resolve(split, val_holdout)
        info = dataset.manifest.split(stored)
        if held_out is None:
            out.append(Evidence(split=split, patients=sorted(info.patients), patches=info.rows))
        elif split == "train":  # trains on the rest
            out.append(Evidence(split=split, patients=sorted(info.patients),
                                patches=info.rows - val_patches))
        else:  # validation held out of the training patients' patches
            out.append(Evidence(split=f"{split} ({val_holdout:.0%} of {stored}'s patches)",
                                patients=sorted(info.patients), patches=val_patches))
    return out


def _patients(n: int) -> str:
    return f"{n} patient" + ("" if n == 1 else "s")


def limitations(cfg: TrainJobConfig, f32_test: dict[str, Any],
                proof: list[Evidence], calibration: str = "none") -> list[str]:
    train, val, test = proof
    synthetic = cfg.dataset == "synthetic"
    validated = (f"validated on {_patients(len(val.patients))} not trained on"
                 if val.split == "val" else
                 "validated on a hold-out of its own training patients' patches (optimistic)")
    lines = [
        f"Trained on {_patients(len(train.patients))} of dataset '{cfg.dataset}'"
        + (" (generated H&E-like patches: demonstrates the platform, not for any clinical "
           "use)" if synthetic else "")
        + f"; {validated}; tested on {_patients(len(test.patients))} it never saw.",
        "Not validated on patients from other sites, scanners, stains or magnifications than "
        "its training data: check it on local cases before relying on it.",
        f"The threshold was chosen on validation for sensitivity >= "
        f"{cfg.eval.min_sensitivity} (rule '{cfg.eval.threshold_rule}'"
        + (f", on the probability calibrated by {calibration} on the same validation patches"
           if calibration != "none" else ", on the raw model output (not calibrated)")
        + "); on the test patients "
        f"sensitivity was {f32_test.get('sensitivity') or float('nan'):.3f} and specificity "
        f"{f32_test.get('specificity') or float('nan'):.3f}.",
        "Scores single patches; it has not been validated as a slide-level diagnosis.",
    ]
    return [*lines, *cfg.registry.limitations]


def model_card(cfg: TrainJobConfig, name: str, dataset: PatchDataset, exported: ExportResult,
               evaluation: Evaluation, records: dict[str, PrecisionRecord], *,
               lineage: dict[str, Any]) -> ModelCard:
    """The card of a model about to be registered (the registry fills version and files)."""
    from patchray.export.precisions import fastest_passed

    proof = evidence(dataset, cfg.data.val_holdout, evaluation.metrics["val"]["n"])
    c0, c1 = dataset.class_names
    size = exported.preprocess.size
    return ModelCard(
        name=name,
        architecture=exported.architecture,
        model_args=exported.model_args,
        dataset=cfg.dataset,
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        input=exported.preprocess,
        class_names=dataset.class_names,
        threshold_rule=evaluation.rule,
        precisions=records,
        serving_precision=fastest_passed(records),
        metrics={**evaluation.summary(), "best_epoch": exported.epoch},
        evidence=proof,
        dataset_manifest_sha256=dataset.content_sha256,
        training_config=cfg.model_dump(mode="json"),
        lineage=lineage,
        code_revision=code_revision(),
        patchray_version=__version__,
        parity={"keras_vs_openvino_max_abs_diff": exported.parity_max_abs_diff,
                "patches": exported.parity_patches, "inference_precision": "f32",
                "atol": cfg.export.parity_atol},
        intended_use=cfg.registry.intended_use or (
            f"Decision support in research settings: scores {size}x{size} px H&E patches for "
            f"'{c1}' (against '{c0}') so that a pathologist looks again at the flagged ones. "
            "A second look, not a diagnosis."),
        limitations=limitations(cfg, evaluation.metrics["test"], proof,
                                evaluation.metrics.get("calibration", {}).get("method", "none")),
    )


def run_train_job(cfg: TrainJobConfig, *, shutdown: bool = True) -> TrainJobResult:
    """Train on an ingested dataset, export, evaluate and write the report.

    The run directory is ``<runs_root>/<name>``. Submitting the same job again after a
    crash finds the run's checkpoints there and resumes after the latest one; submitting a
    finished run again trains nothing and answers with the version it registered (a new
    version only when the weights changed). A ``synthetic`` dataset missing at
    ``data.root`` is generated first.
    """
    if not cfg.data.root:
        raise ConfigError(
            "data.root is required for `patchray train`: point it at an ingested dataset "
            "(patchray ingest ... --out URI), or run `patchray demo` to make one"
        )
    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    log.info("run directory: %s", run_dir)
    runtime.init_ray(cfg.ray)
    try:
        dataset = open_or_make_dataset(cfg.data, cfg.data.root,
                                       synthetic=cfg.dataset == "synthetic")
        trained = train_export_evaluate(cfg, dataset, run_dir)
        return TrainJobResult(run_dir, trained.model_dir, trained.metrics, trained.card,
                              trained.registry)
    finally:
        if shutdown:  # False: a caller's cluster (tests) outlives the job
            runtime.shutdown()
