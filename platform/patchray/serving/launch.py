"""Start the service on a running Ray, and query it over HTTP (the demo's last stage)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from patchray.config import ServeConfig
from patchray.errors import ServiceError

log = logging.getLogger(__name__)


def start_service(cfg: ServeConfig, model_dir: str | Path) -> str:
    """Deploy the model with Ray Serve; return the service's base URL."""
    from ray import serve

    from patchray.serving.deployment import build_app

    serve.start(http_options={"host": cfg.host, "port": cfg.port})
    serve.run(build_app(str(model_dir), cfg), name="patchray",  # a ServeConfig is ServeAppArgs
              route_prefix=cfg.route_prefix)
    return f"http://{cfg.host}:{cfg.port}{cfg.route_prefix.rstrip('/')}"


def query_service(base_url: str, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """POST each patch (PNG bytes in ``image``) concurrently, so Serve can batch them;
    return the answers with the truth beside them."""
    import requests

    def post(row: dict[str, Any]) -> dict[str, Any]:
        r = requests.post(f"{base_url}/v1/predict", data=row["image"],
                          headers={"Content-Type": "image/png"}, timeout=60)
        if r.status_code != 200:
            raise ServiceError(f"POST {base_url}/v1/predict answered {r.status_code}: "
                               f"{r.text[:300]}")
        return {"patient_id": row["patient_id"], "x": row["x"], "y": row["y"],
                "true_label": row["label"], **r.json()}

    with ThreadPoolExecutor(max_workers=8) as pool:
        return list(pool.map(post, rows))


def balanced_sample(rows: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """Up to ``n`` rows, half tumour and half benign where the data allows."""
    rng = np.random.default_rng(0)
    pos = [r for r in rows if r["label"] == 1]
    neg = [r for r in rows if r["label"] == 0]
    take_pos = min(len(pos), n // 2)
    chosen = [pos[i] for i in rng.permutation(len(pos))[:take_pos]]
    chosen += [neg[i] for i in rng.permutation(len(neg))[: n - take_pos]]
    return chosen
