"""The demo run's service (real Ray Serve over HTTP on loopback), its key, and patch makers."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from PIL import Image


@dataclass
class Service:
    url: str
    key: str
    args: object  # ServeAppArgs the service runs with
    model: str  # the card's name
    version: str  # the version served when the session started
    size: int

    def headers(self, **extra: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **extra}

    def classify(self, body: bytes, content_type: str = "image/png", **kwargs) -> requests.Response:
        return requests.post(f"{self.url}/v1/classify", data=body, timeout=60,
                             headers=self.headers(**{"Content-Type": content_type}), **kwargs)


@pytest.fixture(scope="session")
def service(demo_run) -> Service:
    health = requests.get(f"{demo_run.service_url}/healthz", timeout=30).json()
    return Service(demo_run.service_url, demo_run.key, demo_run.service, health["model"],
                   health["model_version"], 50)


def tissue(size: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(100, 230, (size, size, 3), dtype=np.uint8)


def encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    img = Image.fromarray(pixels)
    if mode:
        img = img.convert(mode)
    img.save(buf, format=fmt)
    return buf.getvalue()
