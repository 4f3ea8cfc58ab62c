"""The end-to-end pipeline: make data -> ingest -> train -> export -> evaluate -> serve.

Each stage is a plain function over paths and configs, so jobs and tests can run one stage
alone; :func:`run_demo` strings them together under a single run directory::

    runs/<name>-<timestamp>/
      config.yaml           the resolved job config
      data/                 Parquet dataset + manifest.json (unless data.root is set)
      train/                Ray Train run: checkpoints (best K by val AUC), replica digests
      best_checkpoint/      the best checkpoint, local copy
      model/<name>/<ver>/   OpenVINO IR + metadata.json (what gets served)
      report/               metrics.json, ROC / PR / confusion / learning-curve PNGs
      demo_predictions.json answers of the running service to held-out patches
"""

from __future__ import annotations

import datetime as dt
import json
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from patchray import __version__, storage
from patchray.config import DataConfig, PipelineConfig, RayConfig, dump_config
from patchray.errors import ConfigError
from patchray.data.ingest import read_manifest, synthetic_records, write_split_dataset
from patchray.data.records import decode_record_image, encode_png
from patchray.data.transforms import decode_rows, normalise
from patchray.evaluation.metrics import binary_metrics, choose_threshold
from patchray.export.artifact import InputContract, ModelMetadata, write_metadata
from patchray.models.keras_compat import LEGACY_KERAS_ENV

Log = Callable[[str], None]
QUIET_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2"}


def _say(msg: str) -> None:
    print(f"[patchray] {msg}", flush=True)


# --------------------------------------------------------------------------- stages


def init_ray(rc: RayConfig, *, metrics_port: int | None = None) -> None:
    """Start a local Ray cluster with explicit resources, or join ``rc.address``."""
    import ray

    if ray.is_initialized():
        return
    # S3 endpoint/credential variables go to every worker, or code that opens s3:// URIs
    # inside a task (replica reports, ...) would talk to AWS instead of the configured store.
    # They are then visible in the job's runtime_env (dashboard, GCS): on a shared cluster,
    # prefer node credentials (instance/pod role) and leave AWS_* keys unset on the driver.
    kwargs: dict[str, Any] = {
        "runtime_env": {"env_vars": {**LEGACY_KERAS_ENV, **QUIET_ENV, **storage.s3_env()}},
        "include_dashboard": False,
    }
    if rc.address:
        kwargs["address"] = rc.address
    else:
        # "local", not None: with None, ray.init joins whatever RAY_ADDRESS or the last
        # `ray start` points at (e.g. another job's cluster on this machine) instead.
        kwargs["address"] = "local"
        kwargs["num_cpus"] = rc.num_cpus
        if rc.object_store_memory_mb:
            kwargs["object_store_memory"] = rc.object_store_memory_mb * 1024 * 1024
        if metrics_port:
            kwargs["_metrics_export_port"] = metrics_port
    ray.init(**kwargs)


def make_synthetic_dataset(data: DataConfig, root: str, log: Log = _say) -> dict[str, Any]:
    """Generate the demo patches and ingest them, split by patient, under ``root``."""
    from patchray.data.synthetic import generate_patches

    s = data.synthetic
    start = time.perf_counter()
    patches = generate_patches(
        s.num_patients,
        s.patches_per_patient,
        size=s.patch_size,
        positive_fraction=s.positive_fraction,
        seed=s.seed,
    )
    manifest = write_split_dataset(
        synthetic_records(patches, encoding=data.encoding),
        root,
        train=data.split.train,
        val=data.split.val,
        seed=data.split.seed,
        rows_per_file=data.rows_per_file,
        extra_manifest={"dataset": "synthetic", "synthetic": s.model_dump()},
        encoding=data.encoding,
    )
    counts = ", ".join(
        f"{k}: {v['rows']} patches / {len(v['patients'])} patients / labels {v['labels']}"
        for k, v in manifest["splits"].items()
    )
    log(f"dataset at {root} ({time.perf_counter() - start:.1f}s): {counts}")
    return manifest


def read_patch_rows(
    root: str, split: str, limit: int, *, as_png: bool = False, val_holdout: float = 0.0
) -> list[dict[str, Any]]:
    """The first ``limit`` rows of a split, read directly (small samples, not training).
    ``as_png``: images as PNG bytes whatever the dataset's encoding (what HTTP clients send).
    ``val_holdout``: see :func:`patchray.data.pipeline.resolve_split`."""
    from patchray.data.pipeline import holdout_rows, resolve_split, split_files

    manifest = read_manifest(root)
    stored, held_out = resolve_split(root, split, val_holdout, manifest=manifest)
    fs, paths, encoding = split_files(root, stored, manifest=manifest)
    rows: list[dict[str, Any]] = []
    for path in paths:
        table = pq.read_table(path, filesystem=fs)
        if held_out is not None:
            table = holdout_rows(table, val_holdout, held_out)
        rows.extend(table.slice(0, limit - len(rows)).to_pylist())
        if len(rows) >= limit:
            break
    if as_png and encoding != "png":
        for r in rows:
            r["image"] = encode_png(decode_record_image(
                r["image"], encoding, r["height"], r["width"], source=r["source"]))
    return rows


def export_and_evaluate(
    cfg: PipelineConfig,
    *,
    checkpoint_dir: str,
    data_root: str,
    model_root: str,
    report_dir: str,
    history: list[dict[str, Any]],
    log: Log = _say,
) -> tuple[Path, dict[str, Any]]:
    """Export the checkpoint to OpenVINO IR, choose the threshold on val, score test, and
    write the artifact's metadata and the report. Returns (model_dir, metrics)."""
    from patchray.evaluation.report import write_report
    from patchray.evaluation.scoring import score_split
    from patchray.export.openvino_export import export_openvino

    name = cfg.export.name or f"{cfg.train.model}-{cfg.dataset}"
    model_dir = Path(model_root) / name / cfg.export.version
    holdout = cfg.data.val_holdout
    rows = read_patch_rows(data_root, "val", 64, val_holdout=holdout)
    encoding = read_manifest(data_root)["encoding"]
    sample = normalise(decode_rows(rows, cfg.train.input_size, encoding))
    exported = export_openvino(checkpoint_dir, model_dir, sample)
    if exported.parity_max_abs_diff > cfg.export.parity_atol:
        raise RuntimeError(
            f"OpenVINO output differs from Keras by {exported.parity_max_abs_diff:.2e} "
            f"(> export.parity_atol={cfg.export.parity_atol}); refusing to ship {model_dir}"
        )
    log(f"exported OpenVINO IR to {model_dir} (max |Keras - OpenVINO| = "
        f"{exported.parity_max_abs_diff:.1e} on {len(sample)} val patches)")

    # Score with the IR itself: metrics must describe the artifact that will be served.
    # A provisional metadata.json lets the predictor load; the final one replaces it.
    provisional = _metadata(cfg, name, exported, threshold=0.5, rule={}, metrics={})
    write_metadata(model_dir, provisional)
    y_val, p_val = score_split(str(model_dir), data_root, "val", val_holdout=holdout)
    threshold = choose_threshold(
        y_val, p_val, rule=cfg.eval.threshold_rule, min_sensitivity=cfg.eval.min_sensitivity
    )
    y_test, p_test = score_split(str(model_dir), data_root, "test")
    metrics = {
        "val": binary_metrics(y_val, p_val, threshold).to_dict(),
        "test": binary_metrics(y_test, p_test, threshold).to_dict(),
        # The epoch of the checkpoint exported (Ray Train's best by val AUC, not the last).
        "best_epoch": _checkpoint_epoch(checkpoint_dir),
        "history": history,
    }
    chosen_on = (f"val: {holdout:.0%} of the train patients' patches held out (optimistic)"
                 if holdout else "val")
    rule = {"rule": cfg.eval.threshold_rule, "min_sensitivity": cfg.eval.min_sensitivity,
            "chosen_on": chosen_on}
    metrics["threshold"] = {"value": threshold, **rule}
    report = Path(report_dir)
    report.mkdir(parents=True, exist_ok=True)
    pictures = write_report(report, y_true=y_test, y_score=p_test, threshold=threshold,
                            history=history, prefix="test")
    pictures.update(write_report(report, y_true=y_val, y_score=p_val, threshold=threshold,
                                 prefix="val"))
    metrics["pictures"] = {k: os.path.relpath(v, report) for k, v in pictures.items()}
    (report / "metrics.json").write_text(json.dumps(metrics, indent=2))
    summary = {k: metrics[k] for k in ("val", "test")}
    write_metadata(model_dir, _metadata(cfg, name, exported, threshold, rule, summary))
    return model_dir, metrics


def _checkpoint_epoch(checkpoint_dir: str) -> int:
    from patchray.training.loop import CHECKPOINT_META

    return json.loads((Path(checkpoint_dir) / CHECKPOINT_META).read_text())["epoch"]


def _metadata(cfg: PipelineConfig, name: str, exported: Any, threshold: float,
              rule: dict[str, Any], metrics: dict[str, Any]) -> ModelMetadata:
    return ModelMetadata(
        name=name,
        version=cfg.export.version,
        architecture=exported.architecture,
        model_args=exported.model_args,
        dataset=cfg.dataset,
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        input=InputContract(size=exported.input_size),
        threshold=threshold,
        threshold_rule=rule,
        metrics=metrics,
        files={"fp32": exported.model_xml.name},
        parity={"keras_vs_openvino_max_abs_diff": exported.parity_max_abs_diff,
                "inference_precision": "f32"},
        patchray_version=__version__,
    )


def start_service(cfg: PipelineConfig, model_dir: str | Path) -> str:
    """Deploy the model with Ray Serve; return the service's base URL."""
    from ray import serve

    from patchray.serving.deployment import build_app

    s = cfg.serve
    serve.start(http_options={"host": s.host, "port": s.port})
    app = build_app(
        str(model_dir),
        max_batch_size=s.max_batch_size,
        batch_wait_timeout_s=s.batch_wait_timeout_s,
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        target_ongoing_requests=s.target_ongoing_requests,
        replica_cpus=s.replica_cpus,
    )
    serve.run(app, name="patchray", route_prefix=s.route_prefix)
    return f"http://{s.host}:{s.port}{s.route_prefix.rstrip('/')}"


def query_service(base_url: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST each patch concurrently (so Serve can batch them); return answers with truth."""
    import requests

    def post(row: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(f"{base_url}/v1/predict", data=row["image"],
                          headers={"Content-Type": "image/png"}, timeout=60)
        r.raise_for_status()
        return {"patient_id": row["patient_id"], "x": row["x"], "y": row["y"],
                "true_label": row["label"], **r.json()}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, rows))


# --------------------------------------------------------------------------- jobs


@dataclass(frozen=True)
class TrainJobResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]


def run_train_job(
    cfg: PipelineConfig, *, log: Log = _say, shutdown: bool = True
) -> TrainJobResult:
    """Train on an ingested dataset, export, evaluate and write the report.

    The run directory is ``<runs_root>/<name>``. Submitting the same job again after a
    crash finds the run's checkpoints there and resumes after the latest one; submitting a
    finished run again trains nothing and only re-exports and re-evaluates its best
    checkpoint. A ``synthetic`` dataset missing at ``data.root`` is generated first.
    """
    import ray

    from patchray.training.trainer import run_training

    if not cfg.data.root:
        raise ConfigError(
            "data.root is required for `patchray train`: point it at an ingested dataset "
            "(patchray ingest ... --out URI), or run `patchray demo` to make one"
        )
    run_dir = (Path(cfg.runs_root) / cfg.name).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    log(f"run directory: {run_dir}")
    init_ray(cfg.ray)
    try:
        if cfg.dataset == "synthetic" and not storage.exists(
            storage.join(cfg.data.root, "manifest.json")
        ):
            make_synthetic_dataset(cfg.data, cfg.data.root, log)
        outcome = run_training(cfg, data_root=cfg.data.root, storage_root=str(run_dir),
                               run_name="train", local_dir=str(run_dir), log=log)
        model_dir, metrics = export_and_evaluate(
            cfg, checkpoint_dir=outcome.best_checkpoint_dir, data_root=cfg.data.root,
            model_root=str(run_dir / "model"), report_dir=str(run_dir / "report"),
            history=outcome.history, log=log)
        _log_test_metrics(log, metrics)
        log(f"report: {run_dir / 'report'}; model: {model_dir}")
        return TrainJobResult(run_dir, model_dir, metrics)
    finally:
        if shutdown:  # False: a caller's cluster (tests) outlives the job
            ray.shutdown()


def _log_test_metrics(log: Log, metrics: dict[str, Any]) -> None:
    test, rule = metrics["test"], metrics["threshold"]
    log(f"TEST AUC {test['auc']:.4f}  sensitivity {test['sensitivity']:.3f}  "
        f"specificity {test['specificity']:.3f}  at threshold {rule['value']:.4f} "
        f"(rule '{rule['rule']}' on {rule['chosen_on']}, min_sensitivity "
        f"{rule['min_sensitivity']})")


# --------------------------------------------------------------------------- demo


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    service_url: str
    predictions: list[dict[str, Any]]


def new_run_dir(cfg: PipelineConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(cfg.runs_root) / f"{cfg.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


def run_demo(cfg: PipelineConfig, *, run_dir: Path | None = None, log: Log = _say,
             shutdown: bool = True) -> DemoResult:
    """Run every stage on the real stack. With ``shutdown=False`` Ray and Serve stay up."""
    import ray

    run_dir = run_dir or new_run_dir(cfg)
    log(f"run directory: {run_dir}")
    data_root = cfg.data.root or str(run_dir / "data")
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(stage: str) -> None:
        timings[stage] = round(time.perf_counter() - t0 - sum(timings.values()), 1)

    init_ray(cfg.ray, metrics_port=cfg.serve.metrics_port)
    try:
        log("stage 1/5: make synthetic H&E patches and ingest them to Parquet")
        if not storage.exists(storage.join(data_root, "manifest.json")):
            make_synthetic_dataset(cfg.data, data_root, log)
        lap("data")

        log(f"stage 2/5: train {cfg.train.model} with Ray Train "
            f"({cfg.train.num_workers} workers, {cfg.train.epochs} epochs)")
        from patchray.training.trainer import run_training

        outcome = run_training(cfg, data_root=data_root, storage_root=str(run_dir),
                               run_name="train", local_dir=str(run_dir), log=log)
        lap("train")

        log("stage 3/5: export to OpenVINO IR and evaluate on val/test with it")
        model_dir, metrics = export_and_evaluate(
            cfg, checkpoint_dir=outcome.best_checkpoint_dir, data_root=data_root,
            model_root=str(run_dir / "model"), report_dir=str(run_dir / "report"),
            history=outcome.history, log=log)
        _log_test_metrics(log, metrics)
        lap("export_evaluate")

        log("stage 4/5: serve the OpenVINO model with Ray Serve")
        url = start_service(cfg, model_dir)
        lap("serve")

        log(f"stage 5/5: send {cfg.serve.demo_requests} held-out test patches over HTTP")
        test_rows = read_patch_rows(data_root, "test", 2000, as_png=True)
        rows = _balanced_sample(test_rows, cfg.serve.demo_requests)
        answers = query_service(url, rows)
        (run_dir / "demo_predictions.json").write_text(json.dumps(answers, indent=2))
        for a in answers:
            mark = "ok  " if a["label"] == a["true_label"] else "MISS"
            log(f"  {mark} {a['patient_id']} x={a['x']:<4} y={a['y']:<4} true={a['true_label']} "
                f"p(tumour)={a['probability']:.3f} -> {a['label_name']}")
        lap("query")
        (run_dir / "timings.json").write_text(json.dumps(timings, indent=2))
        _print_where(log, run_dir, model_dir, url, cfg, timings)
        return DemoResult(run_dir, model_dir, metrics, url, answers)
    finally:
        if shutdown:
            from ray import serve

            serve.shutdown()
            ray.shutdown()


def _balanced_sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows, half tumour and half benign where the data allows."""
    rng = np.random.default_rng(0)
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    take_pos = min(len(pos), n // 2)
    chosen = [pos[i] for i in rng.permutation(len(pos))[:take_pos]]
    chosen += [neg[i] for i in rng.permutation(len(neg))[: n - take_pos]]
    return chosen


def _print_where(log: Log, run_dir: Path, model_dir: Path, url: str, cfg: PipelineConfig,
                 timings: dict[str, float]) -> None:
    log(f"stage timings (s): {timings}")
    log(f"artifacts:   {run_dir}")
    log(f"  report:    {run_dir / 'report'} (metrics.json, test_roc.png, ...)")
    log(f"  model:     {model_dir} (OpenVINO IR + metadata.json)")
    log(f"service:     POST {url}/v1/predict  (GET {url}/healthz, {url}/v1/model)")
    log(f"metrics:     http://127.0.0.1:{cfg.serve.metrics_port}/metrics (ray_patchray_*)")
    log(f"serve again: patchray serve {model_dir}")
