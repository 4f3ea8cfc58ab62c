"""Patch decoding, augmentation and normalisation: plain numpy, shared by training and serving.

The model input contract: float32 ``(N, size, size, 3)`` RGB in [0, 1] (pixels / 255).
Patches smaller than ``size`` (IDC edge patches, e.g. 32x50) are padded bottom/right with
white, the colour of empty glass beyond the slide edge, never stretched; larger patches are
resized to ``size`` because the model asked for that size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from patchray.data.records import check_encoding, decode_image, decode_record_image
from patchray.errors import DataError

PAD_VALUE = 255

# Published augmentation maxima for H&E patches (brightness 64/255, saturation 0.75-1,
# hue 0.04, contrast 0.5-1) plus the 8 orthogonal rotations/flips: tissue has no "up".
BRIGHTNESS_MAX = 64.0 / 255.0
SATURATION_RANGE = (0.75, 1.0)
HUE_MAX = 0.04
CONTRAST_RANGE = (0.5, 1.0)

# HED stain augmentation (Tellez et al. 2018, IEEE TMI, "Whole-slide mitosis detection in
# H&E breast histology using PHH3 as a reference to train distilled stain-invariant
# convolutional networks"; the ranges as named in Tellez et al. 2019, MedIA 58:101544): per
# patch and per H, E, D channel, stains * alpha + beta, alpha ~ U(1 - s, 1 + s),
# beta ~ U(-s, s). Strength 1 is their "HED-light" s = 0.05 (HED-strong, s = 0.2, is beyond
# this knob's range). The Ruifrok & Johnston (2001) H, E, DAB OD vectors are
# scikit-image's rgb_from_hed (numpy here: skimage is not a core dependency). beta's units
# depend on the rgb2hed version (skimage < 0.19: -ln(rgb + 2); >= 0.19: ln(rgb) / ln(1e-6));
# here it is Ruifrok-Johnston optical density, -ln(rgb). Measured on synthetic H&E at
# strength 1: 4.1 grey levels mean change, 23 at most (0.5: 2.0 and 12).
HED_MAX = 0.05
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29],
                         [0.07, 0.99, 0.11],
                         [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)


def fit_to_size(pixels: np.ndarray, size: int, pad_value: int = PAD_VALUE) -> np.ndarray:
    """Pad (bottom/right, with ``pad_value``) or resize an HxWx3 uint8 patch to ``size``."""
    h, w = pixels.shape[:2]
    if h == size and w == size:
        return pixels
    if h > size or w > size:  # shrink only the sides that are too long
        h, w = min(h, size), min(w, size)
        pixels = np.asarray(Image.fromarray(pixels).resize((w, h), Image.BILINEAR))
    out = np.full((size, size, 3), pad_value, dtype=np.uint8)
    out[:h, :w] = pixels
    return out


def decode_patches(
    images: Sequence[bytes],
    size: int,
    *,
    encoding: str = "png",
    heights: Sequence[int] | None = None,
    widths: Sequence[int] | None = None,
    pad_value: int = PAD_VALUE,
) -> np.ndarray:
    """Decode patch bytes into a uint8 ``(N, size, size, 3)`` batch.

    ``encoding="png"``: PNG/JPEG bytes. ``encoding="raw"``: the HxWx3 uint8 pixels, row-major
    RGB (``pixels.tobytes()``), whose shape comes from ``heights``/``widths`` (the record's
    native size); without them every item must be ``size`` x ``size``. Raw needs no decoding:
    a batch of full-size patches is one ``np.frombuffer`` over the joined bytes.
    """
    if check_encoding(encoding) == "raw":
        return _raw_to_patches(images, size, heights, widths, pad_value)
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        out[i] = fit_to_size(decode_image(data, source=f"batch item {i}"), size, pad_value)
    return out


def decode_rows(rows: Sequence[dict], size: int, encoding: str) -> np.ndarray:
    """Patch records (``image``, ``height``, ``width``) -> uint8 ``(N, size, size, 3)``."""
    return decode_patches([r["image"] for r in rows], size, encoding=encoding,
                          heights=[r["height"] for r in rows], widths=[r["width"] for r in rows])


def _raw_to_patches(
    images: Sequence[bytes], size: int, heights: Sequence[int] | None,
    widths: Sequence[int] | None, pad_value: int,
) -> np.ndarray:
    n = len(images)
    if (heights is None) != (widths is None):
        raise DataError("raw patches need both heights and widths, or neither")
    hs = np.full(n, size) if heights is None else np.asarray(heights, dtype=np.int64)
    ws = np.full(n, size) if widths is None else np.asarray(widths, dtype=np.int64)
    if len(hs) != n or len(ws) != n:
        raise DataError(f"{n} raw patches but {len(hs)} heights and {len(ws)} widths")
    lengths = np.fromiter((len(b) for b in images), dtype=np.int64, count=n)
    bad = np.flatnonzero(lengths != hs * ws * 3)
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"batch item {i}: {lengths[i]} raw bytes, expected {hs[i]}x{ws[i]}x3 = "
            f"{hs[i] * ws[i] * 3} (is the dataset PNG-encoded?)"
        )
    if n and (hs == size).all() and (ws == size).all():
        return np.frombuffer(b"".join(images), dtype=np.uint8).reshape(n, size, size, 3).copy()
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i, data in enumerate(images):
        out[i] = fit_to_size(decode_record_image(data, "raw", int(hs[i]), int(ws[i])), size,
                             pad_value)
    return out


def normalise(batch: np.ndarray, scale: float = 1.0 / 255.0) -> np.ndarray:
    """uint8 -> float32 ``pixels * scale`` (in [0, 1] by default). Models get it through
    :class:`patchray.inference.preprocess.Preprocess`, which records the scale."""
    return batch.astype(np.float32) * np.float32(scale)


@dataclass(frozen=True)
class AugmentParams:
    """One batch's random augmentation draws, one entry per patch (see :func:`augment`)."""

    quarter_turns: np.ndarray  # int, 0..3 counter-clockwise rotations by 90 degrees
    mirror: np.ndarray  # bool, flip left-right after the rotation
    brightness: np.ndarray  # float32, added to every channel
    contrast: np.ndarray  # float32, factor on the distance to the patch mean
    hue: np.ndarray  # float32, shift as a fraction of the colour circle
    saturation: np.ndarray  # float32, factor on HSV saturation


def draw_augment_params(n: int, rng: np.random.Generator, strength: float = 1.0) -> AugmentParams:
    """Draw the geometry and colour jitter for ``n`` patches: the colour ranges are
    ``strength`` (0..1) times the published maxima; 0 leaves rotations and flips only."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"augment strength must be in [0, 1], got {strength}")
    f32 = np.float32
    b, h = BRIGHTNESS_MAX * strength, HUE_MAX * strength
    # Factor ranges shrink towards 1 (no change): [1 - strength * (1 - low), 1].
    contrast = (1.0 - strength * (1.0 - CONTRAST_RANGE[0]), CONTRAST_RANGE[1])
    saturation = (1.0 - strength * (1.0 - SATURATION_RANGE[0]), SATURATION_RANGE[1])
    return AugmentParams(
        quarter_turns=rng.integers(4, size=n),
        mirror=rng.random(n) < 0.5,
        brightness=rng.uniform(-b, b, n).astype(f32),
        contrast=rng.uniform(*contrast, n).astype(f32),
        hue=rng.uniform(-h, h, n).astype(f32),
        saturation=rng.uniform(*saturation, n).astype(f32),
    )


def hue_rotation(hue: np.ndarray) -> np.ndarray:
    """``(n, 3, 3)`` matrices rotating RGB about the grey axis by ``hue`` turns.

    The hue shift of an RGB->HSV->RGB round trip, approximated by one linear map: greys stay
    fixed, and on H&E colours a shift of +-0.04 moves HSV hue by +0.041 / -0.038 (a YIQ
    rotation, the other usual shortcut, moves it by +0.059 / -0.054). Unlike HSV it keeps
    the channel mean rather than the channel maximum, so pixels differ from the exact round
    trip by ~4/255 on average at the largest shift.
    """
    theta = 2.0 * np.pi * np.asarray(hue, dtype=np.float64)
    cos, sin = np.cos(theta)[:, None, None], np.sin(theta)[:, None, None]
    cross = np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]]) / np.sqrt(3.0)  # [axis]_x
    # Rodrigues' formula for the unit axis (1, 1, 1) / sqrt(3).
    return cos * np.eye(3) + sin * cross + (1.0 - cos) * np.full((3, 3), 1.0 / 3.0)


def apply_augment(batch: np.ndarray, params: AugmentParams) -> np.ndarray:
    """Apply ``params`` to an ``(N, H, W, 3)`` batch; float32 in [0, 1] out.

    ``batch`` is float32 in [0, 1], or uint8 pixels read as pixels / 255: then normalising
    costs no extra pass and the geometry moves a quarter of the bytes. Brightness, then
    contrast about the patch mean, clip, then saturation and hue, clip: the order of the HSV
    implementation this replaces, in a few whole-batch passes (see
    ``python -m patchray.benchmarks augment`` for the speed-up).
    """
    scale = np.float32(1.0 / 255.0 if batch.dtype == np.uint8 else 1.0)
    moved = _orthogonal(batch, params.quarter_turns, params.mirror)  # a contiguous copy
    n = moved.shape[0]
    x = moved.reshape(n, -1, 3)
    c, s = params.contrast, params.saturation
    # (x + b - mean(x + b)) * c + mean(x + b) == x * c + (mean(x) * (1 - c) + b)
    gain = (c * scale)[:, None]
    offset = (x.mean(axis=(1, 2), dtype=np.float32) * scale * (1 - c) + params.brightness)[:, None]
    out = x * gain[:, :, None]
    out += offset[:, :, None]
    np.clip(out, 0.0, 1.0, out=out)
    # HSV saturation * s keeps V = max(r, g, b) and scales each channel's distance to it:
    # rgb * s + (1 - s) * V. V is taken on the input: an increasing affine map and a clip
    # commute with max. The hue rotation fixes greys, so V passes through it unchanged.
    vmax = np.maximum(np.maximum(x[..., 0], x[..., 1]), x[..., 2]) * gain
    vmax += offset
    np.clip(vmax, 0.0, 1.0, out=vmax)
    vmax *= (1 - s)[:, None]
    matrices = (hue_rotation(params.hue) * s[:, None, None]).astype(np.float32)
    out = np.matmul(out, matrices.transpose(0, 2, 1))
    out += vmax[..., None]
    np.clip(out, 0.0, 1.0, out=out)
    return out.reshape(moved.shape)


def _orthogonal(batch: np.ndarray, quarter_turns: np.ndarray, mirror: np.ndarray) -> np.ndarray:
    # Colour jitter is per pixel, so geometry can go first, on the smaller input; grouping
    # patches by their (turns, mirror) pair moves each group with one strided copy.
    if batch.shape[1] != batch.shape[2]:
        raise ValueError(f"augment needs square patches, got {batch.shape[1:3]}")
    out = np.empty_like(batch)
    for k in range(4):
        for flip in (False, True):
            idx = np.flatnonzero((quarter_turns == k) & (mirror == flip))
            if idx.size:
                moved = np.rot90(batch[idx], k=k, axes=(1, 2))
                out[idx] = moved[:, :, ::-1] if flip else moved
    return out


def augment(batch: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random orthogonal rotation/flip and colour jitter (``strength`` of the published
    maxima) per patch; float32 [0,1] out.

    ``batch`` is float32 in [0, 1] or uint8 pixels (see :func:`apply_augment`)."""
    return apply_augment(batch, draw_augment_params(batch.shape[0], rng, strength))


@dataclass(frozen=True)
class HedParams:
    """One batch's HED stain jitter, one row per patch (see :func:`apply_hed`)."""

    alpha: np.ndarray  # (n, 3) float, factor on the H, E and D concentrations
    beta: np.ndarray  # (n, 3) float, added to them


def draw_hed_params(n: int, rng: np.random.Generator, strength: float) -> HedParams:
    """HED jitter for ``n`` patches at ``strength`` (0..1) times :data:`HED_MAX`."""
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"stain augment strength must be in [0, 1], got {strength}")
    s = HED_MAX * strength
    return HedParams(alpha=rng.uniform(1.0 - s, 1.0 + s, (n, 3)),
                     beta=rng.uniform(-s, s, (n, 3)))


def apply_hed(batch: np.ndarray, params: HedParams) -> np.ndarray:
    """Jitter each patch's H, E and D concentrations (colour deconvolution with the
    Ruifrok-Johnston matrix, as ``skimage.color.rgb2hed`` / ``hed2rgb`` but in ln-OD units
    (see :data:`HED_MAX`) and without clipping negative concentrations, so alpha=1, beta=0
    is the identity); float32 in [0, 1] out.

    ``batch``: uint8 pixels or float32 in [0, 1]. The round trip is linear in log RGB, so a
    patch's jitter is one 3x3 matrix and an offset on ``ln(rgb)``: one batched matmul."""
    scale = 1.0 / 255.0 if batch.dtype == np.uint8 else 1.0
    n = batch.shape[0]
    log_rgb = np.log(np.maximum(batch.reshape(n, -1, 3).astype(np.float32) * np.float32(scale),
                                np.float32(1e-6)))
    # stains = -ln(rgb) @ HED_FROM_RGB; ln(rgb') = -(stains * alpha + beta) @ RGB_FROM_HED
    matrices = np.einsum("ij,nj,jk->nik", HED_FROM_RGB, params.alpha, RGB_FROM_HED)
    offsets = -(params.beta @ RGB_FROM_HED)  # (n, 3)
    out = np.matmul(log_rgb, matrices.astype(np.float32))
    out += offsets.astype(np.float32)[:, None, :]
    np.exp(out, out=out)
    np.clip(out, 0.0, 1.0, out=out)
    return out.reshape(batch.shape)


def to_pixels(x: np.ndarray) -> np.ndarray:
    """float [0, 1] -> uint8, rounding (the inverse of :func:`normalise` up to 1/510)."""
    return np.rint(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)


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
    augment_strength: float = 1.0,
    seed: int | None = None,
    encoding: str = "png",
    pad_value: int = PAD_VALUE,
    stain: Any = None,
    stain_augment: float = 0.0,
) -> dict[str, np.ndarray]:
    """One Ray Data batch of records -> uint8 patches ``x``, targets ``y``, weights ``w``.

    ``stain``: the contract's fitted stain normalisation (a
    :class:`~patchray.inference.preprocess.StainNormalisation`, or None), applied right
    after decoding and BEFORE augmentation, so the worker must scale with
    ``stain_normalised=True``. ``stain_augment``: HED jitter strength (:func:`draw_hed_params`),
    with ``augment_patches`` only, before the rotation/flip and colour jitter.

    ``x`` stays uint8 (the worker applies the model's Preprocess): float32 would be 4x the bytes
    in Ray's object store and in every in-flight block, which is what bounds memory when a
    dataset is many times larger than the store. ``encoding="raw"`` (see
    :func:`decode_patches`) also needs the ``height`` and ``width`` columns in ``batch``
    unless every patch is ``size`` x ``size``.

    A multi-scale batch (a ``context_image`` column) also gives ``context``, its second
    view decoded the same way and augmented with the SAME draws as ``x`` (rotation, flip
    and colour), so the two views stay concentric and in the same stain."""
    shape = {"encoding": encoding, "heights": batch.get("height"),
             "widths": batch.get("width"), "pad_value": pad_value}
    x = decode_patches(list(batch["image"]), size, **shape)
    context = (decode_patches(list(batch["context_image"]), size, **shape)
               if "context_image" in batch else None)
    if stain is not None:
        x = stain.apply(x)
        if context is not None:
            context = stain.apply(context)
    if augment_patches:
        rng = np.random.default_rng(seed)
        params = draw_augment_params(x.shape[0], rng, augment_strength)
        # Drawn after the geometry/colour draws, so stain_augment=0 keeps those as they were.
        hed = draw_hed_params(x.shape[0], rng, stain_augment) if stain_augment > 0 else None

        def jitter(views: np.ndarray) -> np.ndarray:
            return to_pixels(apply_augment(views if hed is None else apply_hed(views, hed),
                                           params))

        x = jitter(x)
        if context is not None:
            context = jitter(context)
    # Unlabelled rows (null label: NaN or None here) -> y = -1, w = 0; only a semi-supervised
    # model (patchray.models.sgan) reads the unlabelled split and knows what -1 means.
    y = np.asarray(batch["label"], dtype=np.float64)
    y = np.where(np.isnan(y), -1.0, y).astype(np.float32)
    w = np.where(y < 0, 0.0, np.where(y >= 0.5, weights[1], weights[0])).astype(np.float32)
    out = {"x": x, "y": y, "w": w}
    if context is not None:
        out["context"] = context
    return out
