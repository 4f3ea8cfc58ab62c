"""Ray Serve application builder for patchray (what serve/config.yaml's import_path names).

    serve run serve/config.yaml                                   # local Ray
    serve deploy serve/config.yaml --address http://<head>:8265   # a running cluster

or without a config: ``patchray serve NAME@ALIAS`` (a registry reference) or a version folder.
The logic lives in :mod:`patchray.serving`; ``args`` are :class:`patchray.config.ServeAppArgs`,
unknown keys rejected.
"""

from typing import Any

from patchray.config import ServeAppArgs
from patchray.serving.app import build_app


def build(args: dict[str, Any]) -> Any:
    return build_app(ServeAppArgs.model_validate(args))
