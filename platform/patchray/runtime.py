"""The Ray runtime: one environment for every patchray process, and starting or joining Ray.

Every process patchray runs in (the CLI, Ray workers, Serve replicas, test and benchmark
processes) gets the same variables, defined here once:

* ``TF_USE_LEGACY_KERAS=1`` before TensorFlow is imported (Keras 3 ``fit`` fails under
  ``MultiWorkerMirroredStrategy``: tensorflow#72388, keras#20585);
* TensorFlow's C++ logging at warnings and above;
* no Ray Train print patch (it would route worker ``print`` through logging and echo each
  progress line twice);
* the S3 endpoint and credentials, so code that opens ``s3://`` inside a task talks to the
  configured store and not to AWS.
"""

from __future__ import annotations

import os
from typing import Any

from patchray import storage
from patchray.config import RayConfig
from patchray.models.keras_compat import LEGACY_KERAS_ENV

PROCESS_ENV = {
    **LEGACY_KERAS_ENV,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


def process_env() -> dict[str, str]:
    """The variables every patchray process needs, S3 settings of this one included.

    They are then visible in the job's runtime_env (dashboard, GCS): on a shared cluster,
    prefer node credentials (instance/pod role) and leave AWS_* keys unset on the driver."""
    return {**PROCESS_ENV, **storage.s3_env()}


def runtime_env() -> dict[str, Any]:
    """The Ray ``runtime_env`` for jobs and workers."""
    return {"env_vars": process_env()}


def prepare_process() -> None:
    """Set :data:`PROCESS_ENV` in this process (entry points call it before anything imports
    TensorFlow); variables already set are kept."""
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(rc: RayConfig, *, metrics_port: int | None = None,
             resources: dict[str, float] | None = None) -> None:
    """Start a local Ray cluster with explicit resources, or join ``rc.address``.

    ``resources``: custom resources for a local node on top of ``rc.resources`` (tuning's
    trial slots); a joined cluster keeps the ones its nodes were started with."""
    import ray

    if ray.is_initialized():
        return
    kwargs: dict[str, Any] = {
        "runtime_env": runtime_env(),
        # The dashboard serves the State API, which Ray Train's placement-group cleaner
        # polls: without it, the groups of killed or paused trials leak and the next
        # trial's workers wait for resources that never come back.
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "logging_level": "WARNING",  # Ray's own driver-side INFO lines go to the log file
    }
    if rc.address:
        kwargs["address"] = rc.address
    else:
        # "local", not None: with None, ray.init joins whatever RAY_ADDRESS or the last
        # `ray start` points at (e.g. another job's cluster on this machine) instead.
        kwargs["address"] = "local"
        kwargs["num_cpus"] = rc.num_cpus
        if rc.resources or resources:
            kwargs["resources"] = {**rc.resources, **(resources or {})}
        if rc.object_store_memory_mb:
            kwargs["object_store_memory"] = rc.object_store_memory_mb * 1024 * 1024
        if metrics_port:
            # Ray's documented way to fix a local node's Prometheus port (ray start has
            # --metrics-export-port; ray.init only this underscored argument).
            kwargs["_metrics_export_port"] = metrics_port
    ray.init(**kwargs)


def shutdown(*, serve: bool = False) -> None:
    """Stop Serve (when asked) and this process's Ray connection."""
    import ray

    if serve:
        from ray import serve as ray_serve

        ray_serve.shutdown()
    ray.shutdown()
