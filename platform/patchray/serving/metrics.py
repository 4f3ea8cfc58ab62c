"""patchray's own Prometheus metrics, beside Ray Serve's built-in ``ray_serve_*`` ones.

Ray exports them on each node's metrics port with a ``ray_`` prefix
(``ray_patchray_requests_total``...). Labels are bounded and carry no request data: the route
is the route's template (``/v2/models/{name}/infer``), never the path a client sent, so a
patient identifier put in a URL never becomes a label.
"""

from __future__ import annotations

from typing import Any

from ray.serve import metrics

LATENCY_MS = [1, 2, 3, 5, 8, 13, 20, 30, 50, 80, 130, 200, 300, 500, 1000, 2000, 5000]
BATCH = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
SCORES = [round(0.05 * i, 2) for i in range(1, 20)]  # 0.05 wide bins: drift shows as a shift


def _metric(kind: Any, name: str, description: str, tag_keys: tuple[str, ...],
            **kwargs: Any) -> Any:
    return kind(name, description=description, tag_keys=tag_keys, **kwargs)


class IngressMetrics:
    def __init__(self) -> None:
        self.requests = _metric(metrics.Counter, "patchray_requests_total",
                                "HTTP requests by route template and status code",
                                ("route", "status"))
        self.latency = _metric(metrics.Histogram, "patchray_request_latency_ms",
                               "Time in the ingress per request, by route template",
                               ("route",), boundaries=LATENCY_MS)
        self.patches = _metric(metrics.Counter, "patchray_predictions_total",
                               "Patches classified, by model version and predicted label",
                               ("model", "model_version", "label"))
        self.review = _metric(metrics.Counter, "patchray_review_total",
                              "Patches whose probability fell in the review band",
                              ("model", "model_version"))
        self.scores = _metric(metrics.Histogram, "patchray_tumour_probability",
                              "Predicted tumour probabilities (drift shows here first)",
                              ("model", "model_version"), boundaries=SCORES)
        self.rejected = _metric(metrics.Counter, "patchray_rejected_requests_total",
                                "Requests refused before inference, by reason",
                                ("reason",))

    def answered(self, route: str, status: int, seconds: float) -> None:
        self.requests.inc(tags={"route": route, "status": str(status)})
        self.latency.observe(seconds * 1000.0, tags={"route": route})

    def scored(self, info: Any, answers: list[dict]) -> None:
        tags = {"model": info.name, "model_version": info.version}
        for a in answers:
            self.patches.inc(tags={**tags, "label": a["label_name"]})
            self.scores.observe(a["probability"], tags=tags)
            if a["needs_review"]:
                self.review.inc(tags=tags)


class ClassifierMetrics:
    def __init__(self) -> None:
        self.batch = _metric(metrics.Histogram, "patchray_inference_batch_size",
                             "Patches per OpenVINO call (dynamic batching)", ("model_version",),
                             boundaries=BATCH)
        self.latency = _metric(metrics.Histogram, "patchray_inference_latency_ms",
                               "OpenVINO time per batch", ("model_version",),
                               boundaries=LATENCY_MS)
        self.info = _metric(metrics.Gauge, "patchray_model_info",
                            "1 for the model version a classifier replica serves, else 0",
                            ("model", "model_version", "precision", "sha256"))
        self.swaps = _metric(metrics.Counter, "patchray_model_swaps_total",
                             "Model versions swapped in place, by outcome", ("outcome",))
        self.validation_rate = _metric(
            metrics.Gauge, "patchray_model_validation_positive_rate",
            "Share of validation patches the served version called tumour, at its precision's "
            "threshold (from the model card): what the served positive rate is compared to",
            ("model", "model_version", "precision"))

    def serving(self, info: Any, previous: Any = None) -> None:
        if previous is not None:
            self.info.set(0, tags=_info_tags(previous))
        self.info.set(1, tags=_info_tags(info))

    def validated(self, card: Any, info: Any) -> None:
        rate = validation_positive_rate(card, info.precision)
        if rate is not None:
            self.validation_rate.set(rate, tags={"model": info.name, "model_version": info.version,
                                                 "precision": info.precision})


def validation_positive_rate(card: Any, precision: str) -> float | None:
    """The predicted-positive rate on the validation patients, ``(tp + fp) / n`` from the
    card's record of ``precision`` (scored at that precision's own threshold); None when the
    card has no validation counts."""
    record = card.precisions.get(precision)
    val = record.val if record is not None else {}
    if not val.get("n") or val.get("tp") is None or val.get("fp") is None:
        return None
    return (val["tp"] + val["fp"]) / val["n"]


def _info_tags(info: Any) -> dict[str, str]:
    return {"model": info.name, "model_version": info.version, "precision": info.precision,
            "sha256": info.sha256[:16]}
