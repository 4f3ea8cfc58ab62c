"""``patchray demo``: every stage on the real stack, on generated data, in one run folder::

    runs/<name>-<timestamp>/
      config.yaml, logs/, train/, best_checkpoint/, model.json, report/   as for `patchray train`
      data/                 Parquet dataset + manifest.json (unless data.root is set)
      demo_predictions.json answers of the running service to held-out patches
      timings.json          seconds per stage
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from patchray import runtime
from patchray.config import DemoConfig, dump_config
from patchray.serving.launch import (balanced_sample, client_key, query_service,
                                     service_args, start_service)
from patchray.workflows.train import open_or_make_dataset, train_export_evaluate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoResult:
    run_dir: Path
    model_dir: Path
    metrics: dict[str, Any]
    service_url: str
    predictions: list[dict[str, Any]]
    service: Any = None  # the ServeAppArgs it was deployed with (key store, audit, model)
    key: str = ""  # the demo client's API key


def new_run_dir(cfg: DemoConfig) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = (Path(cfg.runs_root) / f"{cfg.name}-{stamp}").resolve()
    run_dir.mkdir(parents=True, exist_ok=False)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    return run_dir


class _Laps:
    def __init__(self) -> None:
        self.t0, self.timings = time.perf_counter(), {}

    def __call__(self, stage: str) -> None:
        elapsed = time.perf_counter() - self.t0 - sum(self.timings.values())
        self.timings[stage] = round(elapsed, 1)


def run_demo(cfg: DemoConfig, *, run_dir: Path | None = None,
             shutdown: bool = True) -> DemoResult:
    """Run every stage on the real stack. With ``shutdown=False`` Ray and Serve stay up."""
    run_dir = run_dir or new_run_dir(cfg)
    log.info("run directory: %s", run_dir)
    data_root = cfg.data.root or str(run_dir / "data")
    lap = _Laps()
    runtime.init_ray(cfg.ray, metrics_port=cfg.serve.metrics_port)
    try:
        log.info("stage 1/4: synthetic H&E patches, ingested to Parquet split by patient")
        dataset = open_or_make_dataset(cfg.data, data_root, synthetic=True)
        lap("data")

        log.info("stage 2/4: train, export to OpenVINO IR, evaluate on val/test with it")
        trained = train_export_evaluate(cfg, dataset, run_dir)
        lap("train_export_evaluate")

        log.info("stage 3/4: serve %s (%s) with Ray Serve", trained.card.ref,
                 cfg.serve.precision if cfg.serve.precision != "auto"
                 else trained.card.serving_precision)
        # Served by alias, as production would be: a promotion reaches the running service.
        model = (f"{trained.card.name}@{cfg.registry.alias}" if cfg.registry.alias
                 else trained.model_dir)
        args = service_args(cfg.serve, model=model, registry=trained.registry,
                            runs_root=cfg.runs_root)
        url = start_service(cfg.serve, args)
        key = client_key(args, "demo")
        lap("serve")

        log.info("stage 4/4: send %d held-out test patches over HTTP", cfg.serve.demo_requests)
        rows = balanced_sample(dataset.sample_rows("test", 2000, as_png=True),
                               cfg.serve.demo_requests)
        answers = query_service(url, rows, key)
        (run_dir / "demo_predictions.json").write_text(json.dumps(answers, indent=2))
        for a in answers:
            mark = "ok  " if a["label"] == a["true_label"] else "MISS"
            log.info("  %s %s x=%-4s y=%-4s true=%s p(tumour)=%.3f -> %s", mark,
                     a["patient_id"], a["x"], a["y"], a["true_label"], a["probability"],
                     a["label_name"])
        lap("query")
        (run_dir / "timings.json").write_text(json.dumps(lap.timings, indent=2))
        _log_where(run_dir, trained, url, cfg, lap.timings)
        return DemoResult(run_dir, trained.model_dir, trained.metrics, url, answers, args, key)
    finally:
        if shutdown:
            runtime.shutdown(serve=True)


def _log_where(run_dir: Path, trained: Any, url: str, cfg: DemoConfig,
               timings: dict[str, float]) -> None:
    log.info("stage timings (s): %s", timings)
    log.info("artifacts:   %s", run_dir)
    log.info("  report:    %s (metrics.json, test_roc.png, ...)", run_dir / "report")
    log.info("  model:     %s in %s (IR files + card.json, card.md)", trained.card.ref,
             trained.registry)
    log.info("  logs:      %s", run_dir / "logs")
    log.info("service:     %s/v1/classify and /v2 (KServe), API key from `patchray keys "
             "create`; metrics on :%d/metrics", url, cfg.serve.metrics_port)
    log.info("serve again: patchray serve %s --registry %s", trained.card.ref, trained.registry)
