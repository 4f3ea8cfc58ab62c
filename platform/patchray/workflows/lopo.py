"""``patchray evaluate lopo``: leave-one-patient-out evaluation as one Ray job.

    runs/<name>/
      config.yaml          the resolved job config
      logs/patchray.log    everything the job and Ray wrote
      lopo/                folds/<held-out>/{data,seed-<s>}, tune/ (Ray Tune's state),
                           lopo.json, lopo.csv, lopo.md, lopo.png

The folds run as parallel Ray Tune trials (:mod:`patchray.evaluation.lopo_folds`); the plain
logic is :mod:`patchray.evaluation.lopo`. Fold models are not registered. A rerun with the
same name skips the folds that finished.
"""

from __future__ import annotations

import logging
from pathlib import Path

from patchray import runtime, storage
from patchray.config import LopoJobConfig, dump_config
from patchray.errors import ConfigError
from patchray.evaluation.lopo_folds import LopoResult, run_lopo
from patchray.tuning.plan import SLOT
from patchray.workflows.train import open_or_make_dataset, run_dir_of

log = logging.getLogger(__name__)


def run_lopo_job(cfg: LopoJobConfig, *, shutdown: bool = True) -> LopoResult:
    """Plan the folds, materialise their datasets, run the unfinished ones in parallel,
    write lopo.json / .csv / .md / .png under ``<runs_root>/<name>/lopo``."""
    if not cfg.data.root:
        raise ConfigError("data.root is required for `patchray evaluate lopo`: point it at an "
                          "ingested dataset (patchray ingest ... --out URI)")
    run_dir = run_dir_of(cfg)
    out_dir = run_dir / "lopo"
    out_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg))
    log.info("leave-one-out run directory: %s", out_dir)
    root = (cfg.data.root if storage.is_remote(cfg.data.root)
            else str(Path(cfg.data.root).resolve()))  # absolute: trials run elsewhere
    try:
        # A local cluster gets one trial slot, shared by the running folds (tuning.plan).
        runtime.init_ray(cfg.ray, resources=None if cfg.ray.address else {SLOT: 1.0})
        dataset = open_or_make_dataset(cfg.data, root, synthetic=cfg.dataset == "synthetic")
        return run_lopo(cfg, dataset, out_dir)
    finally:
        if shutdown:
            runtime.shutdown()
