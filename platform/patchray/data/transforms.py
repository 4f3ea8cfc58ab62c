"""Patch decoding, augmentation and normalisation: plain numpy, shared by training and serving.

The model input contract: float32 ``(N, size, size, 3)`` RGB in [0, 1] (pixels / 255).
Patches smaller than ``size`` (IDC edge patches, e.g. 32x50) are padded bottom/right with
white, the colour of empty glass beyond the slide edge, never stretched; larger patches are
resized to ``size`` because the model asked for that size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from patchray.data.records import decode_image

PAD_VALUE = 255

# Published augmentation maxima for H&E patches (brightness 64/255, saturation 0.75-1,
# hue 0.04, contrast 0.5-1) plus the 8 orthogonal rotations/flips: tissue has no "up".
BRIGHTNESS_MAX = 64.0 / 255.0
SATURATION_RANGE = (0.75, 1.0)
HUE_MAX = 0.04
CONTRAST_RANGE = (0.5, 1.0)


def fit_to_size(pixels: np.ndarray, size: int) -> np.ndarray:
    """Pad (bottom/right, white) or resize an HxWx3 uint8 patch to ``size`` x ``size``."""
    h, w = pixels.shape[:2]
    if h == size and w == size:
        return pixels
    if h > size or w > size:  # shrink only the sides that are too long
        h, w = min(h, size), min(w, size)
        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR))
    out = np.full((size, size, 3), PAD_VALUE, dtype=np.uint8)
    out[:h, :w] = pixels
    return out


def decode_patches(images: Sequence[bytes], size: int) -> np.ndarray:
    """Decode PNG/JPEG bytes into a uint8 ``(N, size, size, 3)`` batch."""
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        out[i] = fit_to_size(decode_image(data, source=f"batch item {i}"), size)
    return out


def normalise(batch: np.ndarray) -> np.ndarray:
    """uint8 -> float32 in [0, 1]; the only normalisation the models expect."""
    return batch.astype(np.float32) * np.float32(1.0 / 255.0)


def _rgb_to_hsv(rgb: np.ndarray) -> np.ndarray:
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


def _hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    i = np.floor(h * 6.0)
    f = h * 6.0 - i
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    i = i.astype(np.int32) % 6
    choices_r = [v, q, p, p, t, v]
    choices_g = [t, v, v, q, p, p]
    choices_b = [p, p, t, v, v, q]
    r = np.choose(i, choices_r)
    g = np.choose(i, choices_g)
    b = np.choose(i, choices_b)
    return np.stack([r, g, b], -1)


def augment(batch: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random orthogonal rotation/flip and colour jitter per patch; float [0,1] in and out."""
    n = batch.shape[0]
    out = np.empty_like(batch)
    for i in range(n):  # geometry per patch: rot90 cannot vectorise over different k
        img = np.rot90(batch[i], k=int(rng.integers(4)))
        out[i] = img[:, ::-1] if rng.random() < 0.5 else img
    shape = (n, 1, 1, 1)
    out = out + rng.uniform(-BRIGHTNESS_MAX, BRIGHTNESS_MAX, shape).astype(np.float32)
    mean = out.mean(axis=(1, 2, 3), keepdims=True)
    out = (out - mean) * rng.uniform(*CONTRAST_RANGE, shape).astype(np.float32) + mean
    hsv = _rgb_to_hsv(np.clip(out, 0.0, 1.0))
    hsv[..., 0] = (hsv[..., 0] + rng.uniform(-HUE_MAX, HUE_MAX, (n, 1, 1))) % 1.0
    hsv[..., 1] = hsv[..., 1] * rng.uniform(*SATURATION_RANGE, (n, 1, 1))
    return np.clip(_hsv_to_rgb(hsv), 0.0, 1.0).astype(np.float32)


def class_weights(label_counts: dict[str, int], mode: str) -> dict[int, float]:
    """Per-class sample weights; ``balanced`` makes each class weigh half of the loss."""
    n0, n1 = int(label_counts.get("0", 0)), int(label_counts.get("1", 0))
    if mode == "none" or n0 == 0 or n1 == 0:
        return {0: 1.0, 1: 1.0}
    total = n0 + n1
    return {0: total / (2.0 * n0), 1: total / (2.0 * n1)}


def prepare_training_batch(
    batch: dict[str, np.ndarray],
    *,
    size: int,
    augment_patches: bool,
    weights: dict[int, float],
    seed: int | None = None,
) -> dict[str, np.ndarray]:
    """One Ray Data batch of records -> model inputs ``x``, targets ``y``, sample weights ``w``."""
    x = normalise(decode_patches(list(batch["image"]), size))
    if augment_patches:
        x = augment(x, np.random.default_rng(seed))
    y = np.asarray(batch["label"], dtype=np.float32)
    w = np.where(y >= 0.5, weights[1], weights[0]).astype(np.float32)
    return {"x": x, "y": y, "w": w}
