"""Ray Serve application for one exported patchray model.

Run it with the Serve config beside this file (from the repository root)::

    serve run serve/config.yaml                       # local Ray
    serve deploy serve/config.yaml --address http://<head>:8265   # a running cluster

or without a config: ``patchray serve runs/<run>/model/<name>/<version>``.
The deployment logic lives in :mod:`patchray.serving.deployment`; this is only the builder
Serve's ``import_path`` points at.
"""

from typing import Any

from pydantic import BaseModel, ConfigDict

from patchray.serving.deployment import build_app


class AppArgs(BaseModel):
    """``args:`` of the Serve config; unknown keys are rejected."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=())
    model_dir: str
    max_batch_size: int = 32
    batch_wait_timeout_s: float = 0.01
    min_replicas: int = 1
    max_replicas: int = 2
    target_ongoing_requests: float = 8
    replica_cpus: float = 0.5


def build(args: dict[str, Any]) -> Any:
    return build_app(**AppArgs.model_validate(args).model_dump())
