"""The classifier deployment: OpenVINO on batches of decoded patches, one model at a time.

It never imports TensorFlow, so replicas start in seconds. The ingress sends it batches
(uint8 ``(N, S, S, 3)``); each answer carries the :class:`ModelInfo` of the version that
scored it, so a response always names exactly one version, even during a swap.

Model updates without downtime: for ``NAME@ALIAS`` a thread re-reads the alias every
``reload_interval_s``; a new version is loaded beside the old one, then swapped in with one
assignment, so requests in flight finish on the old model and the next ones get the new.
``reconfigure`` does the same for ``user_config: {model: ...}`` in a declarative
``serve deploy`` (an imperative ``serve.run`` restarts every replica instead).

:class:`ModelHolder` is that logic, free of Serve: the ``Classifier`` deployment wraps it
(``topology: split``), and the ingress holds one itself (``topology: fused``), through the
same three awaitable calls (:class:`LocalClassifier`, :class:`RemoteClassifier`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any

import numpy as np
from ray import serve

from patchray.config import ServeAppArgs
from patchray.serving.metrics import ClassifierMetrics
from patchray.serving.model_source import ModelSource, ServedModel

GAUGE_REFRESH_S = 5.0  # under Ray's default gauge lifetime (2 x 10 s export interval)
log = logging.getLogger("ray.serve")  # Serve ships this logger's records to the replica log


class ModelHolder:
    """The served model of one replica: loaded, followed, swapped, scored."""

    def __init__(self, args: ServeAppArgs):
        self.args = args
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
        self.metrics.validated(served.predictor.card, served.info)
        log.info("serving %s (%s)", served.info.ref, served.info.precision)

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        model = user_config.get("model")
        if model and model != self.source.model:
            self._use(model)

    def _follow(self) -> None:
        due = time.monotonic() + self.args.reload_interval_s
        while not self._stop.wait(min(self.args.reload_interval_s, GAUGE_REFRESH_S)):
            # Ray's metrics agent drops a gauge not set again within two export intervals
            # (ray/_private/telemetry/open_telemetry_metric_recorder.py): an idle replica's
            # model_info would vanish from /metrics without this.
            served = self.served
            self.metrics.serving(served.info)
            self.metrics.validated(served.predictor.card, served.info)
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.args.reload_interval_s
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
        self.metrics.validated(fresh.predictor.card, fresh.info)
        self.metrics.swaps.inc(tags={"outcome": "swapped"})
        log.info("model watch: %s -> %s", current.info.ref, fresh.info.ref)

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        served = self.served  # read once: this batch is scored and described by one version
        start = time.perf_counter()
        probabilities = served.predictor.predict_pixels(pixels)
        tags = {"model_version": served.info.version}
        self.metrics.latency.observe((time.perf_counter() - start) * 1000.0, tags=tags)
        self.metrics.batch.observe(len(pixels), tags=tags)
        self.metrics.serving(served.info)  # re-set: a gauge set only at start can be missed
        self.metrics.validated(served.predictor.card, served.info)
        return probabilities, served.info.to_dict()

    def info(self) -> dict[str, Any]:
        return self.served.info.to_dict()

    def card(self) -> dict[str, Any]:
        return self.served.predictor.card.model_dump(mode="json")

    def check_health(self) -> None:
        # Serve's own probe: a replica whose model cannot score a blank patch is restarted.
        size = self.served.info.size
        self.served.predictor.predict_pixels(np.full((1, size, size, 3), 255, dtype=np.uint8))

    def stop(self) -> None:
        self._stop.set()


@serve.deployment(name="Classifier")
class Classifier:
    """``topology: split``: the model in its own deployment, scaled apart from the ingress."""

    def __init__(self, args: dict[str, Any]):
        self.core = ModelHolder(ServeAppArgs.model_validate(args))

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.core.reconfigure(user_config)

    async def score(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return self.core.score(pixels)

    async def info(self) -> dict[str, Any]:
        return self.core.info()

    async def card(self) -> dict[str, Any]:
        return self.core.card()

    def check_health(self) -> None:
        self.core.check_health()

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.stop()


class RemoteClassifier:
    """The ingress's view of a ``Classifier`` deployment (a handle)."""

    def __init__(self, handle: Any):
        self.handle = handle

    async def score(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await self.handle.score.remote(pixels)

    async def info(self) -> dict[str, Any]:
        return await self.handle.info.remote()

    async def card(self) -> dict[str, Any]:
        return await self.handle.card.remote()


class LocalClassifier:
    """``topology: fused``: the model in the ingress replica itself, one hop fewer per
    request. OpenVINO runs in a worker thread (it releases the GIL), so the event loop keeps
    reading and decoding the next requests meanwhile."""

    def __init__(self, core: ModelHolder):
        self.core = core

    async def score(self, pixels: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        return await asyncio.get_running_loop().run_in_executor(None, self.core.score, pixels)

    async def info(self) -> dict[str, Any]:
        return self.core.info()

    async def card(self) -> dict[str, Any]:
        return self.core.card()
