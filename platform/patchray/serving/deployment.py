"""Ray Serve deployment: an OpenVINO patch classifier behind HTTP.

Endpoints (under the application's route prefix):
  POST /v1/predict   body = one PNG or JPEG patch (Content-Type image/png or image/jpeg)
                     -> {"probability", "label", "label_name", "threshold", "model",
                         "model_version", "precision"}
  GET  /v1/model     the model card (input contract, thresholds per precision, metrics)
  GET  /healthz      200 when the model is loaded
Prometheus metrics (``ray_patchray_*``) are exported on the Ray node's metrics port.

Each request is decoded on its own (a bad image fails only its own request, with 400), then
the decoded patches are batched across concurrent requests for one OpenVINO call.
"""


import time
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve
from ray.serve import metrics

from patchray.config import ServeAppArgs
from patchray.errors import DataError
from patchray.inference.predictor import PatchPredictor

ACCEPTED_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
MAX_BODY_BYTES = 4 * 1024 * 1024  # a 512x512 PNG patch is well under this

api = FastAPI(title="patchray patch classifier", version="1")


DEFAULTS = ServeAppArgs()  # the one source of the deployment's settings


def _metric(kind: Any, name: str, description: str, tags: dict[str, str],
            extra_tags: tuple[str, ...] = (), **kwargs: Any) -> Any:
    metric = kind(name, description=description, tag_keys=(*tags, *extra_tags), **kwargs)
    metric.set_default_tags(dict(tags))  # a copy: Serve adds its own tags to it in place
    return metric


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": message})


@serve.deployment(name="PatchClassifier")
@serve.ingress(api)
class PatchClassifierService:
    def __init__(
        self,
        model_dir: str,
        precision: str = DEFAULTS.precision,
        max_batch_size: int = DEFAULTS.max_batch_size,
        batch_wait_timeout_s: float = DEFAULTS.batch_wait_timeout_s,
    ):
        self.predictor = PatchPredictor.from_card(model_dir, precision=precision)
        self.meta = self.predictor.card
        self._score_batch.set_max_batch_size(max_batch_size)
        self._score_batch.set_batch_wait_timeout_s(batch_wait_timeout_s)
        tags = {"model": self.meta.name, "model_version": str(self.meta.version),
                "precision": self.predictor.precision}
        self.m_predictions = _metric(
            metrics.Counter, "patchray_predictions_total",
            "Patches classified, by predicted label", tags, extra_tags=("label",))
        self.m_rejected = _metric(
            metrics.Counter, "patchray_rejected_requests_total",
            "Requests rejected before inference, by reason", tags, extra_tags=("reason",))
        self.m_batch = _metric(
            metrics.Histogram, "patchray_inference_batch_size",
            "Patches per OpenVINO call (dynamic batching)", tags,
            boundaries=[1, 2, 4, 8, 16, 32, 64, 128])
        self.m_latency = _metric(
            metrics.Histogram, "patchray_inference_latency_ms",
            "OpenVINO inference time per batch", tags,
            boundaries=[1, 2, 5, 10, 20, 50, 100, 200, 500])
        self.m_probability = _metric(
            metrics.Histogram, "patchray_tumour_probability",
            "Predicted tumour probabilities (watch for drift)", tags,
            boundaries=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])

    # Set per replica from ServeAppArgs in __init__; the decorator needs a starting value.
    @serve.batch(max_batch_size=DEFAULTS.max_batch_size,
                 batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s)
    async def _score_batch(self, patches: list[np.ndarray]) -> list[float]:
        start = time.perf_counter()
        probs = self.predictor.predict_pixels(np.stack(patches))
        self.m_latency.observe((time.perf_counter() - start) * 1000.0)
        self.m_batch.observe(len(patches))
        return [float(p) for p in probs]

    @api.post("/v1/predict")
    async def predict(self, request: Request) -> Any:
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in ACCEPTED_TYPES:
            self.m_rejected.inc(tags={"reason": "content_type"})
            return _error(
                415,
                f"Content-Type {content_type or '(none)'!r} not accepted; send the patch as the "
                f"request body with one of: {', '.join(ACCEPTED_TYPES)}",
            )
        body = await request.body()
        if not body or len(body) > MAX_BODY_BYTES:
            self.m_rejected.inc(tags={"reason": "size"})
            return _error(413 if body else 400, f"body must be 1..{MAX_BODY_BYTES} bytes of image")
        try:
            pixels = self.predictor.preprocess.decode(body, source="request body")
        except DataError as e:
            self.m_rejected.inc(tags={"reason": "decode"})
            return _error(400, str(e))
        probability = await self._score_batch(pixels)
        label = self.predictor.label(probability)
        self.m_predictions.inc(tags={"label": self.meta.class_names[label]})
        self.m_probability.observe(probability)
        return {
            "probability": probability,
            "label": label,
            "label_name": self.meta.class_names[label],
            "threshold": self.predictor.threshold,
            "model": self.meta.name,
            "model_version": str(self.meta.version),
            "precision": self.predictor.precision,
        }

    @api.get("/v1/model")
    async def model_info(self) -> dict[str, Any]:
        return self.meta.model_dump(mode="json")

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok", "model": self.meta.name,
                "model_version": str(self.meta.version), "precision": self.predictor.precision}

    def check_health(self) -> None:
        # Serve's own probe: a replica whose model cannot score a blank patch is restarted.
        blank = np.full((1, self.predictor.size, self.predictor.size, 3), 255, dtype=np.uint8)
        self.predictor.predict_pixels(blank)


def build_app(
    model_dir: str,
    args: ServeAppArgs = DEFAULTS,
) -> Any:
    """The Serve application for one registered model folder, with autoscaling."""
    return PatchClassifierService.options(
        autoscaling_config={
            "min_replicas": args.min_replicas,
            "initial_replicas": max(1, args.min_replicas),
            "max_replicas": args.max_replicas,
            "target_ongoing_requests": args.target_ongoing_requests,
        },
        # High enough for a batch to fill: Serve's default of 5 would cap every batch at 5.
        max_ongoing_requests=max(2 * args.max_batch_size, 16),
        ray_actor_options={"num_cpus": args.replica_cpus},
    ).bind(model_dir, args.precision, args.max_batch_size, args.batch_wait_timeout_s)
