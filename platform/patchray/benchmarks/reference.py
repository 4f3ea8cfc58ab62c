"""The augmentation as it was before it was vectorised: the baseline of the ``augment`` benchmark.

Exact RGB -> HSV -> RGB colour jitter and a per-patch rotation loop, kept only so the
benchmark can report before/after figures in one run and the tests can check that the fast
version (:func:`patchray.data.transforms.apply_augment`) stays close to it.
"""

from __future__ import annotations

import numpy as np

from patchray.data.transforms import AugmentParams


def rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    maxc = rgb.max(-1)
    minc = rgb.min(-1)
    delta = maxc - minc
    s = np.where(maxc > 0, delta / np.maximum(maxc, 1e-12), 0.0)
    safe = np.maximum(delta, 1e-12)
    rc, gc, bc = (maxc - r) / safe, (maxc - g) / safe, (maxc - b) / safe
    h = np.where(maxc == r, bc - gc, np.where(maxc == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = np.where(delta > 0, (h / 6.0) % 1.0, 0.0)
    return np.stack([h, s, maxc], -1)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int32) % 6
    r = np.choose(i, [v, q, p, p, t, v])
    g = np.choose(i, [t, v, v, q, p, p])
    b = np.choose(i, [p, p, t, v, v, q])
    return np.stack([r, g, b], -1)


def apply_augment_hsv(batch: np.ndarray, params: AugmentParams) -> np.ndarray:
    """The pre-vectorisation ``augment`` with its random draws taken from ``params``."""
    n = batch.shape[0]
    out = np.empty_like(batch)
    for i in range(n):
        img = np.rot90(batch[i], k=int(params.quarter_turns[i]))
        out[i] = img[:, ::-1] if params.mirror[i] else img
    shape = (n, 1, 1, 1)
    out = out + params.brightness.reshape(shape)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * params.contrast.reshape(shape) + mean
    hsv = rgb_to_hsv(np.clip(out, 0.0, 1.0))
    hsv[..., 0] = (hsv[..., 0] + params.hue.reshape(n, 1, 1)) % 1.0
    hsv[..., 1] = hsv[..., 1] * params.saturation.reshape(n, 1, 1)
    return np.clip(hsv_to_rgb(hsv), 0.0, 1.0).astype(np.float32)
