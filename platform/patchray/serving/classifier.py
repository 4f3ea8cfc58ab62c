"""The classifier deployment: OpenVINO on batches of decoded patches, one model at a time.

It never imports TensorFlow, so replicas start in seconds. The ingress sends it batches
(uint8 ``(N, S, S, 3)``); each answer carries the :class:`ModelInfo` of the version that
scored it, so a response always names exactly one version, even during a swap.

Model updates without downtime: for ``NAME@ALIAS`` a thread re-reads the alias every
``reload_interval_s``; a new version is loaded beside the old one, then swapped in with one
assignment, so requests in flight finish on the old model and the next ones get the new.
``reconfigure`` does the same for ``user_config: {model: ...}`` in a declarative
``serve deploy`` (an imperative ``serve.run`` restarts every replica instead).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from patchray.config import ServeAppArgs
from patchray.serving.metrics import ClassifierMetrics
from patchray.serving.model_source import ModelSource, ServedModel

log = logging.getLogger("ray.serve")  # Serve ships this logger's records to the replica log


@serve.deployment(name="Classifier")
class Classifier:
    def __init__(self, args: dict[str, Any]):
        self.args = ServeAppArgs.model_validate(args)
        self.metrics = ClassifierMetrics()
        self._lock = threading.Lock()  # one swap at a time (watch thread vs reconfigure)
        self._use(self.args.model)
        self._stop = threading.Event()
        threading.Thread(target=self._follow, name="patchray-model-watch", daemon=True).start()

    def _use(self, model: str) -> None:
        source = ModelSource(model, registry=self.args.registry, precision=self.args.precision)
        served = source.load()
        with self._lock:
            previous = getattr(self, "served", None)
            self.source, self.served = source, served
        self.metrics.serving(served.info, previous.info if previous else None)
        log.info("serving %s (%s)", served.info.ref, served.info.precision)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        model = user_config.get("model")
        if model and model != self.source.model:
            self._use(model)

    def _follow(self) -> None:
        while not self._stop.wait(self.args.reload_interval_s):
            if not (self.args.follow_alias and self.source.follows_alias):
                continue
            try:
                self._swap_if_moved()
            except Exception as e:  # keep serving the current version; say why, loudly
                self.metrics.swaps.inc(tags={"outcome": "failed"})
                log.error("model watch: %s keeps serving: %s", self.served.info.ref, e)

    def _swap_if_moved(self) -> None:
        current = self.served
        fresh: ServedModel | None = self.source.newer(current.info)
        if fresh is None:
            return
        with self._lock:
            self.served = fresh  # the swap: one assignment
        self.metrics.serving(fresh.info, current.info)
        self.metrics.swaps.inc(tags={"outcome": "swapped"})
        log.info("model watch: %s -> %s", current.info.ref, fresh.info.ref)

    async def score(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        served = self.served  # read once: this batch is scored and described by one version
        start = time.perf_counter()
        probabilities = served.predictor.predict_pixels(pixels)
        tags = {"model_version": served.info.version}
        self.metrics.latency.observe((time.perf_counter() - start) * 1000.0, tags=tags)
        self.metrics.batch.observe(len(pixels), tags=tags)
        self.metrics.serving(served.info)  # re-set: a gauge set only at start can be missed
        return probabilities, served.info.to_dict()

    async def info(self) -> dict[str, Any]:
        return self.served.info.to_dict()

    async def card(self) -> dict[str, Any]:
        return self.served.predictor.card.model_dump(mode="json")

    def check_health(self) -> None:
        # Serve's own probe: a replica whose model cannot score a blank patch is restarted.
        size = self.served.info.size
        self.served.predictor.predict_pixels(np.full((1, size, size, 3), 255, dtype=np.uint8))

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
