"""Stain normalisation of uint8 H&E patch batches (Macenko, Reinhard): plain numpy.

Both methods are fitted once on a reference (many patches pooled) and then map every patch
to the reference's colour, patch by patch (a patch's output depends on that patch alone, so
batching never changes a prediction). The fitted parameters are plain floats that travel in
the model's input contract (:class:`patchray.inference.preprocess.StainNormalisation`).

- Macenko et al. 2009 ("A method for normalizing histology slides for quantitative
  analysis"): optical density ``OD = -ln((I + 1) / 256)``, pixels with ``OD < beta`` in any
  channel dropped as transparent, the plane of the two largest eigenvectors of the OD
  tuples (the SVD of the paper: uncentred second moments), the stain vectors at the
  ``alpha`` / ``100 - alpha`` percentiles of the angle in that plane (haematoxylin first:
  the one absorbing more red), per-pixel concentrations by least squares, and their 99th
  percentile scaled to the reference's. With ``I0 = 256`` and ``I + 1``, white (255) is
  OD 0 exactly, so glass stays white.
- Reinhard et al. 2001 ("Color transfer between images"): per-channel mean / standard
  deviation matching in Ruderman's l-alpha-beta space (numpy: scikit-image is not a core
  dependency of patchray, and serving must not grow one for a 3x3 matrix and a log).

Hand-written rather than torchstain (1.4.1, numpy backend, torch-free on import): it
normalises one image at a time, fails on a patch without tissue (empty eigen problem, NaN),
and uses ``Io = 240`` with a truncating cast, so white glass comes out 240 and every pixel
is biased down by up to one level; patchray needs batches, a per-patch fallback and white
kept white.

Robustness: a patch with fewer than :func:`min_tissue_pixels` tissue pixels (white glass, a
mostly padded edge patch) is returned unchanged; a patch whose own stain estimate is
degenerate (one stain only, collinear or non-physical vectors) is unmixed with the
reference's stain matrix instead. Nothing here produces NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

BETA = 0.15  # OD below which a channel counts as transparent (Macenko 2009)
ALPHA = 1.0  # angle percentile (%) of the extreme stain vectors (Macenko 2009)
MAX_PERCENTILE = 99.0  # robust maximum of a stain's concentration (Macenko 2009)
I0 = 256.0  # incident light for (I + 1): 255 -> OD 0
MIN_TISSUE_FRACTION = 0.02  # of a patch's pixels, and at least MIN_TISSUE_ABSOLUTE
MIN_TISSUE_ABSOLUTE = 16
MAX_STAIN_COSINE = 0.995  # H and E closer than this: the estimate is degenerate
_EPS = 1e-6


def min_tissue_pixels(pixels_per_patch: int) -> int:
    """How many tissue pixels a patch needs for its stain to be estimated at all."""
    return max(MIN_TISSUE_ABSOLUTE, math.ceil(MIN_TISSUE_FRACTION * pixels_per_patch))


def _check_batch(pixels: np.ndarray) -> np.ndarray:
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise ValueError(f"stain normalisation takes uint8 (N, H, W, 3) patches, got "
                         f"{pixels.dtype} {pixels.shape}")
    return pixels


def optical_density(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` -> float64 optical density ``-ln((I + 1) / 256)`` (>= 0)."""
    return -np.log((pixels.astype(np.float64) + 1.0) / I0)


def tissue_mask(od: np.ndarray, beta: float = BETA) -> np.ndarray:
    """Pixels that absorb at least ``beta`` in every channel (Macenko's non-transparent)."""
    return (od >= beta).all(axis=-1)


def masked_percentile(values: np.ndarray, mask: np.ndarray, q: float | Sequence[float]
                      ) -> np.ndarray:
    """``np.percentile(values[i][mask[i]], q)`` (linear) for every row i at once, from one
    sort: ``(N,)`` for one ``q``, ``(N, len(q))`` for several; NaN for a row with no masked
    value (callers treat those rows as without tissue)."""
    qs = np.atleast_1d(np.asarray(q, dtype=np.float64))
    count = mask.sum(axis=1)[:, None]  # (N, 1)
    ordered = np.sort(np.where(mask, values, np.inf), axis=1)
    pos = np.clip(qs[None, :] / 100.0 * (count - 1), 0, None)  # (N, Q)
    lo = np.floor(pos).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(count - 1, 0))
    low = np.take_along_axis(ordered, lo, axis=1)
    high = np.take_along_axis(ordered, hi, axis=1)
    with np.errstate(invalid="ignore"):
        out = np.where(count > 0, low + (pos - lo) * (high - low), np.nan)
    return out if np.ndim(q) else out[:, 0]


def estimate_stains(od: np.ndarray, mask: np.ndarray, alpha: float = ALPHA
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Macenko's stain vectors of each row of ``od`` (``(N, P, 3)``, tissue ``mask``
    ``(N, P)``): ``(N, 2, 3)`` unit OD vectors (haematoxylin, eosin) and whether each
    row's estimate is usable (enough non-degenerate tissue)."""
    n, p = mask.shape
    count = mask.sum(axis=1)
    weighted = od * mask[..., None]
    moments = np.swapaxes(weighted, 1, 2) @ od / np.maximum(count, 1)[:, None, None]
    values, vectors = np.linalg.eigh(moments)  # ascending eigenvalues
    first, second = vectors[..., 2], vectors[..., 1]  # (N, 3) each
    first = first * np.where(first.sum(axis=1, keepdims=True) < 0, -1.0, 1.0)  # OD > 0
    plane = od @ np.stack([first, second], axis=2)  # (N, P, 2)
    angle = np.arctan2(plane[..., 1], plane[..., 0])
    lo, hi = masked_percentile(angle, mask, [alpha, 100.0 - alpha]).T
    v_lo = np.cos(lo)[:, None] * first + np.sin(lo)[:, None] * second
    v_hi = np.cos(hi)[:, None] * first + np.sin(hi)[:, None] * second
    lo_is_h = (v_lo[:, 0] > v_hi[:, 0])[:, None]
    h, e = np.where(lo_is_h, v_lo, v_hi), np.where(lo_is_h, v_hi, v_lo)
    stains = np.stack([h, e], axis=1)
    stains = stains / np.maximum(np.linalg.norm(stains, axis=-1, keepdims=True), _EPS)
    with np.errstate(invalid="ignore"):
        cosine = np.einsum("ni,ni->n", stains[:, 0], stains[:, 1])
        usable = (
            (count >= min_tissue_pixels(p))
            & np.isfinite(stains).all(axis=(1, 2))
            & (values[:, 1] > _EPS * np.maximum(values[:, 2], _EPS))  # a plane, not a line
            & (cosine < MAX_STAIN_COSINE)
            & (stains > -0.1).all(axis=(1, 2))  # absorbance is not negative
        )
    stains = np.where(usable[:, None, None], stains, np.nan_to_num(stains))
    return stains, usable


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations ``(N, P, 2)`` of ``od`` ``(N, P, 3)`` for each
    row's stain matrix ``stains`` ``(N, 2, 3)``."""
    unmix = np.linalg.pinv(np.swapaxes(stains, 1, 2))  # (N, 2, 3)
    return od @ np.swapaxes(unmix, 1, 2)


def fit_macenko(pixels: np.ndarray, *, alpha: float = ALPHA, beta: float = BETA
                ) -> tuple[np.ndarray, np.ndarray]:
    """A reference's stain matrix ``(2, 3)`` (H, E unit OD vectors, from all its patches'
    tissue pixels pooled) and reference maximum concentrations ``(2,)``: the median over its
    patches of each patch's 99th percentile, measured as :func:`macenko_normalise` measures
    a patch. (The pooled 99th percentile would sit above most patches' own, so normalising
    the reference itself would darken it: ~30 grey levels in green on synthetic H&E.)"""
    pixels = _check_batch(pixels)
    pool = pixels.reshape(1, -1, 3)
    od = optical_density(pool)
    mask = tissue_mask(od, beta)
    stains, usable = estimate_stains(od, mask, alpha)
    if not usable[0]:
        raise ValueError(f"the stain reference has {int(mask.sum())} tissue pixels of "
                         f"{pool.shape[1]} or a degenerate (single-stain) colour "
                         "distribution: pick H&E patches with tissue")
    _, max_c, keep = _patch_concentrations(pixels, stains[0], alpha, beta)
    if keep.all():
        raise ValueError(f"none of the {len(pixels)} stain reference patches has enough "
                         f"tissue ({min_tissue_pixels(pixels.shape[1] * pixels.shape[2])} "
                         "pixels) to measure its stain concentrations")
    return stains[0], np.median(max_c[~keep], axis=0)


def _patch_concentrations(pixels: np.ndarray, ref: np.ndarray, alpha: float, beta: float
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each patch's concentrations ``(N, P, 2)`` (its own stain matrix, or ``ref`` where
    that is degenerate), their 99th percentiles ``(N, 2)``, and which patches to leave
    unchanged (too little tissue, or no concentration to scale)."""
    n = pixels.shape[0]
    od = optical_density(pixels.reshape(n, -1, 3))
    mask = tissue_mask(od, beta)
    stains, usable = estimate_stains(od, mask, alpha)
    stains = np.where(usable[:, None, None], stains, ref)  # degenerate: the reference's
    conc = concentrations(od, stains)
    max_c = np.stack([masked_percentile(conc[..., k], mask, MAX_PERCENTILE)
                      for k in range(2)], axis=1)  # (N, 2)
    keep = (mask.sum(axis=1) < min_tissue_pixels(od.shape[1])) | ~(
        np.isfinite(max_c).all(axis=1) & (max_c > _EPS).all(axis=1))
    return conc, max_c, keep


def macenko_normalise(pixels: np.ndarray, stain_matrix: np.ndarray,
                      max_concentrations: np.ndarray, *, alpha: float = ALPHA,
                      beta: float = BETA) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` -> uint8 ``(N, H, W, 3)`` in the reference's stain."""
    pixels = _check_batch(pixels)
    if pixels.shape[0] == 0:
        return pixels.copy()
    ref = np.asarray(stain_matrix, dtype=np.float64).reshape(2, 3)
    ref_max = np.asarray(max_concentrations, dtype=np.float64).reshape(2)
    conc, max_c, keep = _patch_concentrations(pixels, ref, alpha, beta)
    factor = np.where(keep[:, None], 1.0, ref_max / np.where(keep[:, None], 1.0, max_c))
    out = np.exp(-((conc * factor[:, None, :]) @ ref)) * I0 - 1.0
    out = np.rint(np.clip(out, 0.0, 255.0)).astype(np.uint8).reshape(pixels.shape)
    out[keep] = pixels[keep]  # too little tissue: unchanged
    return out


# Reinhard 2001: RGB -> LMS (cone space), log10, then Ruderman's decorrelated l-alpha-beta.
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402],
                        [0.1967, 0.7244, 0.0782],
                        [0.0241, 0.1288, 0.8444]])
_LMS_TO_LAB = (np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)])
               @ np.array([[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]]))
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)


def rgb_to_lab(pixels: np.ndarray) -> np.ndarray:
    """uint8 ``(..., 3)`` -> float64 l-alpha-beta (of ``(I + 1) / 256``, so log is finite)."""
    rgb = (pixels.astype(np.float64) + 1.0) / I0
    return np.log10(rgb @ _RGB_TO_LMS.T) @ _LMS_TO_LAB.T


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    """l-alpha-beta -> uint8 (the inverse of :func:`rgb_to_lab`, rounded and clipped)."""
    rgb = (10.0 ** (lab @ _LAB_TO_LMS.T)) @ _LMS_TO_RGB.T * I0 - 1.0
    return np.rint(np.clip(np.nan_to_num(rgb), 0.0, 255.0)).astype(np.uint8)


def _lab_stats(lab: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    count = np.maximum(mask.sum(axis=1), 1)[:, None]  # (N, 1)
    w = mask[..., None]
    mean = (lab * w).sum(axis=1) / count
    std = np.sqrt((((lab - mean[:, None]) ** 2) * w).sum(axis=1) / count)
    return mean, std


def fit_reinhard(pixels: np.ndarray, *, beta: float = BETA) -> tuple[np.ndarray, np.ndarray]:
    """A reference's l-alpha-beta means ``(3,)`` and standard deviations ``(3,)``: the
    median over its patches of each patch's tissue statistics, measured as
    :func:`reinhard_normalise` measures a patch (pooled statistics would add the spread
    between patches to every patch's: normalising the reference would shift it ~12 levels)."""
    pixels = _check_batch(pixels)
    n = pixels.shape[0]
    flat = pixels.reshape(n, -1, 3)
    mask = tissue_mask(optical_density(flat), beta)
    mean, std = _lab_stats(rgb_to_lab(flat), mask)
    usable = (mask.sum(axis=1) >= min_tissue_pixels(flat.shape[1])) & (std > _EPS).all(axis=1)
    if not usable.any():
        raise ValueError(f"none of the {n} stain reference patches has enough tissue "
                         f"({min_tissue_pixels(flat.shape[1])} pixels) with colour spread: "
                         "pick H&E patches with tissue")
    return np.median(mean[usable], axis=0), np.median(std[usable], axis=0)


def reinhard_normalise(pixels: np.ndarray, means: np.ndarray, stds: np.ndarray, *,
                       beta: float = BETA) -> np.ndarray:
    """uint8 ``(N, H, W, 3)`` -> uint8, each patch's tissue l-alpha-beta statistics moved
    to the reference's (every pixel of the patch transformed alike)."""
    pixels = _check_batch(pixels)
    n = pixels.shape[0]
    if n == 0:
        return pixels.copy()
    flat = pixels.reshape(n, -1, 3)
    mask = tissue_mask(optical_density(flat), beta)
    lab = rgb_to_lab(flat)
    mean, std = _lab_stats(lab, mask)
    keep = (mask.sum(axis=1) < min_tissue_pixels(flat.shape[1])) | ~(std > _EPS).all(axis=1)
    gain = np.where(keep[:, None], 1.0, np.asarray(stds) / np.where(keep[:, None], 1.0, std))
    shift = np.where(keep[:, None], 0.0, np.asarray(means) - mean * gain)
    out = lab_to_rgb(lab * gain[:, None] + shift[:, None]).reshape(pixels.shape)
    out[keep] = pixels[keep]
    return out
