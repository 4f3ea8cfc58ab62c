"""Promotion and rollback reach the running service under load, with zero failed requests."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest
import requests
from tests.integration.serving.conftest import encode, tissue

pytestmark = pytest.mark.integration


class Load:
    """Closed-loop clients on loopback until stopped: every answer's status and version."""

    def __init__(self, service, clients: int = 4):
        self.service, self.stop = service, threading.Event()
        self.seen: list[tuple[float, int, str | None]] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(clients)]

    def _run(self, i: int) -> None:
        session = requests.Session()
        single = encode(tissue(seed=i))
        files = [("files", (f"p{k}.png", encode(tissue(seed=k)), "image/png")) for k in range(5)]
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                if n % 3:
                    r = session.post(f"{self.service.url}/v1/classify", data=single, timeout=30,
                                     headers=self.service.headers(**{"Content-Type": "image/png"}))
                else:  # a multi-patch request: one version for all of its patches
                    r = session.post(f"{self.service.url}/v1/classify", files=files, timeout=30,
                                     headers=self.service.headers())
                version = r.json()["model"]["version"] if r.status_code == 200 else None
                status = r.status_code
            except requests.RequestException:
                status, version = -1, None
            with self.lock:
                self.seen.append((time.monotonic(), status, version))

    def __enter__(self) -> Load:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)

    def wait_for(self, version: str, timeout_s: float) -> float:
        """Seconds until every answer of the last second names ``version``."""
        start = time.monotonic()
        while time.monotonic() - start < timeout_s:
            time.sleep(0.5)
            with self.lock:
                recent = [v for t, s, v in self.seen if t > time.monotonic() - 1.0]
            if recent and all(v == version for v in recent):
                return time.monotonic() - start
        raise AssertionError(f"service did not move to version {version} in {timeout_s}s: "
                             f"{Counter(v for _, _, v in self.seen[-50:])}")


def test_promote_and_rollback_are_hitless_under_load(service, demo_run):
    from patchray.registry.card import read_card
    from patchray.registry.store import ModelRegistry

    registry = ModelRegistry(service.args.registry)
    alias = service.args.model.split("@")[1]
    first = service.version
    second = registry.register(demo_run.model_dir, read_card(demo_run.model_dir))
    budget = 3 * service.args.reload_interval_s + 20
    with Load(service) as load:
        time.sleep(2)
        registry.promote(service.model, second.version, alias)
        took_promote = load.wait_for(str(second.version), budget)
        registry.rollback(service.model, alias)
        took_rollback = load.wait_for(first, budget)
        time.sleep(1)
    statuses = Counter(s for _, s, _ in load.seen)
    versions = Counter(v for _, _, v in load.seen)
    print(f"promote took {took_promote:.1f}s, rollback {took_rollback:.1f}s; "
          f"statuses {dict(statuses)}; versions {dict(versions)}")
    assert set(statuses) == {200}, statuses  # zero failed requests
    assert set(versions) == {first, str(second.version)}
    assert len(load.seen) > 50
    health = requests.get(f"{service.url}/healthz", timeout=30).json()
    assert health["model_version"] == first
