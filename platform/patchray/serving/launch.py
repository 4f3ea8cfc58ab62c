"""Start the service on a running Ray, and query it over HTTP (the demo's last stage)."""

from __future__ import annotations

import base64
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from patchray import storage
from patchray.config import ServeAppArgs, ServeConfig
from patchray.errors import ServiceError

log = logging.getLogger(__name__)
APP_NAME = "patchray"


def service_args(cfg: ServeConfig, *, model: str | Path, registry: str = "",
                 runs_root: str = "runs") -> ServeAppArgs:
    """The application's args: ``cfg`` with the model, and the key store and audit folder
    under ``runs_root/service`` unless the spec or the environment says otherwise."""
    from patchray.registry.store import default_root
    from patchray.serving.audit import AUDIT_ENV
    from patchray.serving.keys import KEYS_ENV

    state = storage.join(runs_root, "service")
    values = {k: getattr(cfg, k) for k in ServeAppArgs.model_fields}
    values["model"] = str(model)
    values["registry"] = registry or cfg.registry or default_root(runs_root)
    if not values["keys"] and not os.environ.get(KEYS_ENV):
        values["keys"] = storage.join(state, "keys.json")
    if not values["audit_dir"] and not os.environ.get(AUDIT_ENV):
        values["audit_dir"] = storage.join(state, "audit")
    return ServeAppArgs.model_validate(values)


def start_service(cfg: ServeConfig, args: ServeAppArgs) -> str:
    """Deploy the application with Ray Serve; return the service's base URL."""
    from ray import serve

    from patchray.serving.app import build_app

    from patchray.serving.app import NO_ACCESS_LOG

    serve.start(http_options={"host": cfg.host, "port": cfg.port,
                              "request_timeout_s": cfg.request_timeout_s},
                logging_config=NO_ACCESS_LOG)
    serve.run(build_app(args), name=APP_NAME, route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def client_key(args: ServeAppArgs, client: str) -> str:
    """A new API key for ``client`` in the service's key store (the demo's own client)."""
    from patchray.serving.keys import KeyStore, default_keys_uri

    _, token = KeyStore(args.keys or default_keys_uri()).create(client)
    return token


def query_service(base_url: str, rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """Classify each patch (PNG bytes in ``image``) as its own concurrent request, so Serve
    batches them; return the answers with the truth beside them."""
    import requests

    def post(row: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(f"{base_url}/v1/classify", data=row["image"], timeout=60,
                          headers={"Content-Type": "image/png", "Authorization": f"Bearer {key}"})
        if r.status_code != 200:
            raise ServiceError(f"POST {base_url}/v1/classify answered {r.status_code}: "
                               f"{r.text[:300]}")
        answer = r.json()
        (patch,) = answer["predictions"]
        return {"patient_id": row["patient_id"], "x": row["x"], "y": row["y"],
                "true_label": row["label"], **patch, "threshold": answer["threshold"],
                "model": answer["model"]["name"], "model_version": answer["model"]["version"],
                "precision": answer["model"]["precision"], "request_id": answer["request_id"]}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, rows))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def balanced_sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows, half tumour and half benign where the data allows."""
    rng = np.random.default_rng(0)
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    take_pos = min(len(pos), n // 2)
    chosen = [pos[i] for i in rng.permutation(len(pos))[:take_pos]]
    chosen += [neg[i] for i in rng.permutation(len(neg))[: n - take_pos]]
    return chosen
