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

Starting or joining: a process starts its own local Ray unless it is given a cluster, either
``ray.address`` in its spec or by running as a job submitted through the Ray Jobs API
(``patchray submit``), whose driver always joins the cluster it was submitted to
(:func:`cluster_address`). A joined cluster's workers get no credentials from the driver:
its nodes have their own (instance profile, IRSA, or the environment Ray was started with).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from typing import Any

from patchray import storage
from patchray.config import RayConfig
from patchray.models.keras_compat import LEGACY_KERAS_ENV

log = logging.getLogger(__name__)

#: Set by Ray's job supervisor in the environment of a submitted job's entrypoint: the job's
#: runtime_env and metadata as JSON (ray._private.runtime_env.constants).
RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"

PROCESS_ENV = {
    **LEGACY_KERAS_ENV,
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_TRAIN_ENABLE_PRINT_PATCH": "0",
}


_joined: list[bool] = [False]  # whether init_ray joined a cluster (True) or started one


def process_env() -> dict[str, str]:
    """The variables every patchray process needs, S3 settings of this one included.

    They are then visible in the job's runtime_env (dashboard, GCS): on a shared cluster,
    prefer node credentials (instance/pod role) and leave AWS_* keys unset on the driver.
    After :func:`init_ray` joined a cluster, credentials are left out (:func:`joined_env`)."""
    if _joined[0]:
        return joined_env(os.environ)
    return {**PROCESS_ENV, **storage.s3_env()}


def runtime_env() -> dict[str, Any]:
    """The Ray ``runtime_env`` for jobs and workers."""
    return {"env_vars": process_env()}


def cluster_address(address: str, environ: Mapping[str, str]) -> str | None:
    """The cluster a process joins, or None to start a local one.

    ``address`` (``ray.address``) wins. Without it, the driver of a submitted job (Ray's job
    supervisor set :data:`RAY_JOB_CONFIG_ENV`) joins with ``"auto"``, which Ray resolves to
    the ``RAY_ADDRESS`` the supervisor set: a job never starts a second Ray inside the cluster.
    A bare ``RAY_ADDRESS`` elsewhere is not enough (a test session or another job on this
    machine exports one to its children, which must still start their own cluster)."""
    if address:
        return address
    if environ.get(RAY_JOB_CONFIG_ENV):
        return "auto"
    return None


def submitted_job_env_vars(environ: Mapping[str, str]) -> dict[str, str]:
    """The env vars of the runtime_env this process was submitted with ({} outside a job)."""
    raw = environ.get(RAY_JOB_CONFIG_ENV)
    if not raw:
        return {}
    try:
        job = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return dict(((job.get("runtime_env") or {}).get("env_vars")) or {})


def joined_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The env vars a driver that joined a cluster hands its workers: :data:`PROCESS_ENV` and
    where ``s3://`` goes (endpoint, region), never credentials (a runtime_env is stored in
    plain text in the GCS and shown by the dashboard; the nodes bring their own). Variables
    the submitted job's runtime_env already sets are left out: Ray refuses a ``ray.init``
    runtime_env that repeats one of the job's variables."""
    s3 = {name: environ[name] for name in storage.S3_ENV
          if name not in storage.CREDENTIAL_ENV and environ.get(name)}
    job = submitted_job_env_vars(environ)
    return {k: v for k, v in {**PROCESS_ENV, **s3}.items() if k not in job}


def prepare_process() -> None:
    """Set :data:`PROCESS_ENV` in this process (entry points call it before anything imports
    TensorFlow); variables already set are kept."""
    for key, value in PROCESS_ENV.items():
        os.environ.setdefault(key, value)


def init_ray(rc: RayConfig, *, metrics_port: int | None = None,
             resources: dict[str, float] | None = None) -> None:
    """Start a local Ray cluster with explicit resources, or join a cluster: ``rc.address``,
    or the one a submitted job runs on (:func:`cluster_address`).

    ``resources``: custom resources for a local node on top of ``rc.resources`` (tuning's
    trial slots); a joined cluster keeps the ones its nodes were started with."""
    import ray

    if ray.is_initialized():
        return
    address = cluster_address(rc.address, os.environ)
    kwargs: dict[str, Any] = {
        # The dashboard serves the State API, which Ray Train's placement-group cleaner
        # polls: without it, the groups of killed or paused trials leak and the next
        # trial's workers wait for resources that never come back.
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "logging_level": "WARNING",  # Ray's own driver-side INFO lines go to the log file
    }
    if address:
        env_vars = joined_env(os.environ)
        if env_vars:
            kwargs["runtime_env"] = {"env_vars": env_vars}
        kwargs["address"] = address
        log.info("joining the Ray cluster at %s%s", address,
                 " (this is a submitted job)" if not rc.address else "")
    else:
        kwargs["runtime_env"] = runtime_env()
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
    _joined[0] = bool(address)


def shutdown(*, serve: bool = False) -> None:
    """Stop Serve (when asked) and this process's Ray connection."""
    import ray

    if serve:
        from ray import serve as ray_serve

        ray_serve.shutdown()
    ray.shutdown()
    _joined[0] = False
