"""Ray Serve application for one exported patchray model.

Run it with the Serve config beside this file (from the repository root)::

    serve run serve/config.yaml                       # local Ray
    serve deploy serve/config.yaml --address http://<head>:8265   # a running cluster

or without a config: ``patchray serve NAME@ALIAS`` (a registry reference) or a version folder.
The deployment logic lives in :mod:`patchray.serving.deployment`; this is only the builder
Serve's ``import_path`` points at. Its ``args`` are :class:`patchray.config.ServeAppArgs`
(the same model as a job spec's ``serve:`` section) plus ``model_dir``.
"""

from typing import Any

from patchray.config import ServeAppArgs
from patchray.serving.deployment import build_app


class AppArgs(ServeAppArgs):
    """``args:`` of the Serve config; unknown keys are rejected."""

    model_dir: str


def build(args: dict[str, Any]) -> Any:
    parsed = AppArgs.model_validate(args)
    return build_app(parsed.model_dir, parsed)  # an AppArgs is a ServeAppArgs
