"""Deterministic synthetic H&E-like patches for the demo and the tests.

No real slides can be downloaded where patchray is developed and tested, so this module
draws small RGB patches that look like haematoxylin & eosin stained breast tissue:

* label 1 (invasive carcinoma): crowded nests of large, irregular, pleomorphic nuclei
  with vesicular chromatin and a pale purple cytoplasm halo;
* label 0 (benign): pink collagen stroma with fibres, white fat vacuoles, sparse
  spindle-shaped fibroblast nuclei, and sometimes a normal duct (a ring of small round
  nuclei around a lumen) or a cluster of small, very dark lymphocytes.

Colour is rendered with the Beer-Lambert stain model used by colour-deconvolution
papers: each pixel holds an amount of haematoxylin and of eosin, and
``rgb = background * exp(-(h * h_od + e * e_od))``. Every patient gets its own stain
vectors and strengths (:func:`patient_stain`), so colour varies between patients more
than between classes, and benign patches get denser stroma so that mean darkness is
matched between classes. The signal a classifier has to learn is therefore structural
(nucleus size, shape and crowding), not a colour threshold.

Every patch is drawn from its own generator seeded by ``(seed, patient, patch)``, so
pixels do not depend on how many patches are generated or in which order.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "StainStyle", "SyntheticPatch", "generate_patch", "generate_patches", "patch_pixels",
    "patient_layout", "patient_name", "patient_stain",
]

# Domain-separation tags for SeedSequence: numpy pads short entropy with zeros, so
# [seed, i] and [seed, i, 0] would otherwise give the same stream.
_STREAM_PATIENT_STAIN = 0x5_7A1
_STREAM_PATIENT_LAYOUT = 0x1A_70
_STREAM_PATCH = 0xBA7C

# Macenko et al. reference optical-density vectors for haematoxylin and eosin.
_H_OD = np.array([0.5626, 0.7201, 0.4062])
_E_OD = np.array([0.2159, 0.8012, 0.5581])

# Geometry below is in pixels of a 50 px patch and scaled by size / 50, so a 96 px
# patch shows the same tissue at a finer resolution.
_REFERENCE_SIZE = 50


@dataclass(frozen=True)
class StainStyle:
    """How one patient's slides took up the stains (lab, fixation, scanner differ).

    ``h_od`` / ``e_od`` are unit optical-density vectors (RGB absorbance per unit of
    stain), ``h_strength`` / ``e_strength`` scale how much stain a tissue component
    takes up, and ``background`` is the RGB of empty glass (0-255).
    """

    h_od: tuple[float, float, float]
    e_od: tuple[float, float, float]
    h_strength: float
    e_strength: float
    background: tuple[float, float, float]


@dataclass(frozen=True)
class SyntheticPatch:
    """One generated patch and where it sits on its patient's virtual slide."""

    pixels: np.ndarray  # HxWx3 uint8
    label: int  # 1 = invasive carcinoma, 0 = benign
    patient_id: str  # e.g. "synth-p03"
    x: int  # top-left pixel of the patch on a virtual slide grid (multiples of size)
    y: int


def patient_stain(patient_index: int, seed: int) -> StainStyle:
    """Return the stain style of one synthetic patient (deterministic in both arguments)."""
    _check_seed(seed)
    if patient_index < 0:
        raise ValueError(f"patient_index must be >= 0, got {patient_index}")
    rng = np.random.default_rng([seed, _STREAM_PATIENT_STAIN, patient_index])
    # Perturbing the OD vectors shifts hue (bluer or redder haematoxylin, pinker or more
    # orange eosin); the strengths shift intensity. These spreads are deliberately larger
    # than the class difference in mean colour.
    h_od = _unit(_H_OD + rng.normal(0.0, [0.08, 0.06, 0.07]))
    e_od = _unit(_E_OD + rng.normal(0.0, [0.10, 0.06, 0.10]))
    h_strength = float(np.exp(rng.normal(0.0, 0.20)))
    e_strength = float(np.exp(rng.normal(0.0, 0.25)))
    background = np.clip(rng.normal(242.0, 5.0, 3), 225.0, 255.0)
    return StainStyle(
        h_od=_as_triple(h_od),
        e_od=_as_triple(e_od),
        h_strength=h_strength,
        e_strength=e_strength,
        background=_as_triple(background),
    )


def generate_patch(
    rng: np.random.Generator, label: int, stain: StainStyle, size: int = 50
) -> np.ndarray:
    """Draw one ``size`` x ``size`` x 3 uint8 patch of benign (0) or carcinoma (1) tissue."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    if size < 16:
        raise ValueError(f"size must be >= 16 pixels, got {size}")
    scale = size / _REFERENCE_SIZE
    yy, xx = _pixel_centres(size)

    if label == 1:
        h_map, e_map = _carcinoma_tissue(rng, size, scale, xx, yy)
    else:
        h_map, e_map = _benign_tissue(rng, size, scale, xx, yy)

    # Section thickness varies a little from patch to patch, even on one slide.
    thickness = float(np.exp(rng.normal(0.0, 0.10)))
    h_od = np.multiply(stain.h_od, stain.h_strength * thickness)
    e_od = np.multiply(stain.e_od, stain.e_strength * thickness)
    od = h_map[..., None] * h_od + e_map[..., None] * e_od
    rgb = np.asarray(stain.background) * np.exp(-od)
    rgb = _gaussian_blur(rgb, 0.6 * scale)  # optics: nothing in a scan is pixel-sharp
    rgb += rng.standard_normal(rgb.shape, dtype=np.float32) * 2.5  # sensor noise
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def generate_patches(
    num_patients: int = 8,
    patches_per_patient: int = 400,
    *,
    size: int = 50,
    positive_fraction: float = 0.3,
    seed: int = 0,
) -> Iterator[SyntheticPatch]:
    """Yield ``num_patients * patches_per_patient`` patches, patient by patient.

    Each patient's positive fraction is ``positive_fraction`` shifted by up to about
    +-0.1 (deterministically), as real patients carry different tumour burdens. Patches
    lie on a square grid per patient, and tumour patches form one contiguous region
    of that grid, as a tumour does on a slide.
    """
    _check_seed(seed)
    if num_patients < 0 or patches_per_patient < 0:
        raise ValueError(
            f"num_patients and patches_per_patient must be >= 0, "
            f"got {num_patients} and {patches_per_patient}"
        )
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")

    for p in range(num_patients):
        labels, positions = patient_layout(p, seed, patches_per_patient, positive_fraction, size)
        for i in range(patches_per_patient):
            label = int(labels[i])
            yield SyntheticPatch(
                pixels=patch_pixels(seed, p, i, label, size),
                label=label,
                patient_id=patient_name(p),
                x=positions[i][0],
                y=positions[i][1],
            )


def patient_name(patient_index: int) -> str:
    return f"synth-p{patient_index:02d}"


def patient_layout(
    patient_index: int, seed: int, n: int, positive_fraction: float, size: int
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """One patient's labels and (x, y) grid positions, without drawing any pixels (what the
    first pass of an ingest needs to split patients)."""
    cols = max(1, math.ceil(math.sqrt(n)))
    labels = _patient_labels(patient_index, seed, n, cols, positive_fraction)
    return labels, [((i % cols) * size, (i // cols) * size) for i in range(n)]


def patch_pixels(seed: int, patient_index: int, patch_index: int, label: int,
                 size: int) -> np.ndarray:
    """The pixels of one patch, from its own generator: the same in any order or process."""
    rng = np.random.default_rng([seed, _STREAM_PATCH, patient_index, patch_index])
    return generate_patch(rng, label, patient_stain(patient_index, seed), size)


# --------------------------------------------------------------------------- layout


def _patient_labels(
    patient_index: int, seed: int, n: int, cols: int, positive_fraction: float
) -> np.ndarray:
    rng = np.random.default_rng([seed, _STREAM_PATIENT_LAYOUT, patient_index])
    fraction = positive_fraction
    if 0.0 < positive_fraction < 1.0:  # 0 and 1 are explicit requests; honour them exactly
        fraction = float(np.clip(positive_fraction + rng.uniform(-0.1, 0.1), 0.02, 0.98))
    n_pos = int(round(fraction * n))
    if n == 0:
        return np.zeros(0, dtype=np.int8)
    idx = np.arange(n)
    col, row = idx % cols, idx // cols
    rows = max(1, math.ceil(n / cols))
    centre = rng.uniform([0, 0], [cols, rows])
    # Jitter makes the tumour border ragged instead of a perfect disc.
    dist = np.hypot(col - centre[0], row - centre[1]) + rng.uniform(0.0, 1.5, n)
    labels = np.zeros(n, dtype=np.int8)
    labels[np.argsort(dist, kind="stable")[:n_pos]] = 1
    return labels


# --------------------------------------------------------------------------- tissue


def _benign_tissue(
    rng: np.random.Generator, size: int, scale: float, xx: np.ndarray, yy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0.0, math.pi)
    # Dense, dark stroma is common in benign breast and matches the mean darkness of
    # tumour patches, so darkness alone cannot tell the classes apart.
    e_map = _stroma(
        rng, size, scale, xx, yy, angle,
        density=rng.uniform(0.6, 1.5), fibre_strength=rng.uniform(0.35, 0.8),
    )
    h_map = 0.05 + 0.03 * _smooth_noise(rng, size, 4)

    nuclei: list[np.ndarray] = []
    n = rng.poisson(6.0)
    # Fibroblasts are thin spindles lying along the collagen fibres.
    nuclei.append(_nucleus_params(
        rng, n, cx=rng.uniform(0, size, n), cy=rng.uniform(0, size, n),
        a=rng.uniform(2.0, 3.4, n) * scale, aspect=rng.uniform(0.25, 0.4, n),
        theta=angle + rng.normal(0.0, 0.15, n), irregular=0.03,
        darkness=rng.uniform(1.0, 1.5, n), vesicular=0.0,
    ))

    if rng.random() < 0.4:
        r_fat = rng.uniform(5.0, 13.0, rng.integers(1, 4)) * scale
        _punch_fat(e_map, h_map, xx, yy, rng.uniform(0, size, (len(r_fat), 2)), r_fat, scale)

    if rng.random() < 0.4:
        # A normal duct/acinus: a lumen ringed by small uniform epithelial nuclei.
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        lumen = rng.uniform(2.5, 6.0) * scale
        ring = lumen + 2.0 * scale
        n = max(6, int(2 * math.pi * ring / (3.4 * scale)))
        phi = np.linspace(0, 2 * math.pi, n, endpoint=False) + rng.uniform(0, 2 * math.pi)
        phi = phi + rng.normal(0, 0.08, n)
        rad = ring + rng.normal(0, 0.3 * scale, n)
        nuclei.append(_nucleus_params(
            rng, n, cx=cx + rad * np.cos(phi), cy=cy + rad * np.sin(phi),
            a=rng.uniform(1.4, 1.9, n) * scale, aspect=rng.uniform(0.8, 1.0, n),
            theta=phi, irregular=0.03, darkness=rng.uniform(1.1, 1.5, n), vesicular=0.0,
        ))
        _paint_disc(e_map, xx, yy, cx, cy, ring + 2.5 * scale, add=0.3)  # cytoplasm
        _punch_fat(e_map, h_map, xx, yy, np.array([[cx, cy]]), np.array([lumen]), scale)

    if rng.random() < 0.45:
        # Lymphocytes: the benign look-alike of "many dark nuclei" that keeps nucleus
        # density and darkness from being a shortcut.
        nuclei.append(_lymphocytes(rng, int(rng.integers(15, 50)), size, scale, 5.0, 12.0))

    if rng.random() < 0.12:
        # Usual ductal hyperplasia: crowded, mildly enlarged but bland epithelial nuclei,
        # the benign mimic that keeps the task from being perfectly separable.
        n = rng.integers(10, 30)
        cx, cy = rng.uniform(0.2 * size, 0.8 * size, 2)
        spread = rng.uniform(5.0, 10.0) * scale
        nuclei.append(_nucleus_params(
            rng, n, cx=rng.normal(cx, spread, n), cy=rng.normal(cy, spread, n),
            a=rng.uniform(1.9, 2.7, n) * scale, aspect=rng.uniform(0.6, 0.9, n),
            theta=rng.uniform(0, math.pi, n), irregular=0.05,
            darkness=rng.uniform(0.9, 1.3, n), vesicular=0.05,
        ))
        _paint_disc(e_map, xx, yy, cx, cy, 1.8 * spread, add=0.25)

    h_nuc = _draw_nuclei(np.concatenate(nuclei), size, scale)
    h_map = np.maximum(h_map, h_nuc)
    e_map = e_map * (1.0 - 0.6 * np.clip(h_nuc, 0, 1))
    return h_map, e_map


def _carcinoma_tissue(
    rng: np.random.Generator, size: int, scale: float, xx: np.ndarray, yy: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0.0, math.pi)
    e_map = _stroma(
        rng, size, scale, xx, yy, angle,
        density=rng.uniform(0.35, 0.9), fibre_strength=rng.uniform(0.1, 0.5),
    )
    h_map = 0.05 + 0.04 * _smooth_noise(rng, size, 4)

    # Cellularity varies a lot: a patch can be the solid core of the tumour or its
    # infiltrating edge, where a few tumour cells in stroma are genuinely hard to call.
    # Counts do not depend on ``size``: a patch covers the same tissue at any resolution.
    cellularity = rng.uniform(0.06, 0.25) if rng.random() < 0.15 else rng.uniform(0.3, 1.0)
    n = max(2, int(rng.poisson(40.0 * cellularity)))
    n_nests = rng.integers(1, 4)
    nest_c = rng.uniform(0.1 * size, 0.9 * size, (n_nests, 2))
    nest_sd = rng.uniform(6.0, 16.0, n_nests) * scale
    which = rng.integers(0, n_nests, n)
    cx = nest_c[which, 0] + rng.normal(0, 1, n) * nest_sd[which]
    cy = nest_c[which, 1] + rng.normal(0, 1, n) * nest_sd[which]
    # Pleomorphism: a log-normal spread of sizes around a patch-specific grade.
    grade = rng.uniform(2.4, 3.5)
    a = np.clip(grade * np.exp(rng.normal(0, 0.22, n)), 1.6, 6.0) * scale
    nuclei = [_nucleus_params(
        rng, n, cx=cx, cy=cy, a=a, aspect=rng.uniform(0.6, 1.0, n),
        theta=rng.uniform(0, math.pi, n), irregular=rng.uniform(0.08, 0.2),
        darkness=rng.uniform(0.8, 1.3, n), vesicular=rng.uniform(0.1, 0.35),
    )]
    if rng.random() < 0.2:  # tumour-infiltrating lymphocytes
        nuclei.append(_lymphocytes(rng, int(rng.integers(5, 20)), size, scale, 4.0, 10.0))
    if rng.random() < 0.12:
        r_fat = rng.uniform(4.0, 9.0, 1) * scale
        _punch_fat(e_map, h_map, xx, yy, rng.uniform(0, size, (1, 2)), r_fat, scale)

    h_nuc = _draw_nuclei(np.concatenate(nuclei), size, scale)
    # A wide blur of the nucleus mask, saturated: cytoplasm reaching ~2-3 px around
    # each nucleus and merging between crowded ones, as in a tumour cell nest.
    halo = np.clip(3.0 * _gaussian_blur(np.minimum(h_nuc, 1.0), 1.8 * scale) - 0.15, 0.0, 1.0)
    # Tumour cytoplasm is lilac (both stains) and displaces the stroma around the nuclei.
    e_map = e_map * (1.0 - 0.5 * halo) + 0.35 * halo
    h_map = np.maximum(h_map + 0.25 * halo, h_nuc)
    e_map = e_map * (1.0 - 0.6 * np.clip(h_nuc, 0, 1))
    return h_map, e_map


def _lymphocytes(
    rng: np.random.Generator, n: int, size: int, scale: float, min_sd: float, max_sd: float
) -> np.ndarray:
    """A cluster of small, round, very dark nuclei (an inflammatory infiltrate)."""
    cx, cy = rng.uniform(0, size, 2)
    spread = rng.uniform(min_sd, max_sd) * scale
    return _nucleus_params(
        rng, n, cx=rng.normal(cx, spread, n), cy=rng.normal(cy, spread, n),
        a=rng.uniform(1.1, 1.6, n) * scale, aspect=rng.uniform(0.85, 1.0, n),
        theta=rng.uniform(0, math.pi, n), irregular=0.02,
        darkness=rng.uniform(1.4, 1.9, n), vesicular=0.0,
    )


def _stroma(
    rng: np.random.Generator, size: int, scale: float, xx: np.ndarray, yy: np.ndarray,
    angle: float, *, density: float, fibre_strength: float,
) -> np.ndarray:
    # Collagen: noise stretched along ``angle`` (long streaks, thin across) whose
    # across-coordinate is bent by smooth noise, so bundles wave and fray instead of
    # forming a regular grating.
    along = (xx * math.cos(angle) + yy * math.sin(angle)) / scale
    across = (-xx * math.sin(angle) + yy * math.cos(angle)) / scale
    across = across + 3.0 * _smooth_noise(rng, size, 3)
    streaks = _lattice_noise(rng, along / rng.uniform(8.0, 16.0), across / rng.uniform(1.6, 2.6))
    fibres = np.clip(streaks, 0.0, None) ** 1.5
    patchy = 1.0 + 0.25 * _smooth_noise(rng, size, 5)
    texture = 1.0 - fibre_strength + 1.6 * fibre_strength * fibres
    return np.clip(density * patchy * texture, 0.0, None)


# --------------------------------------------------------------------------- drawing


def _nucleus_params(
    rng: np.random.Generator, n: int, *, cx: np.ndarray, cy: np.ndarray, a: np.ndarray,
    aspect: np.ndarray, theta: np.ndarray, irregular: float, darkness: np.ndarray,
    vesicular: float,
) -> np.ndarray:
    # One row per nucleus; irregularity = amplitudes/phases of 2nd and 3rd harmonics
    # of the boundary radius, which turns ellipses into lobulated, angular shapes.
    amp = rng.uniform(0.3, 1.0, (n, 2)) * irregular
    phase = rng.uniform(0, 2 * math.pi, (n, 2))
    out = np.empty((n, 11))
    out[:, 0], out[:, 1], out[:, 2], out[:, 3] = cx, cy, a, np.asarray(a) * aspect
    out[:, 4], out[:, 5:7], out[:, 7:9] = theta, amp, phase
    out[:, 9], out[:, 10] = darkness, vesicular
    return out


def _draw_nuclei(params: np.ndarray, size: int, scale: float) -> np.ndarray:
    """Rasterise all nuclei at once and return the haematoxylin amount per pixel.

    Each nucleus is evaluated only in a small window around its centre (not the whole
    patch) and the windows are max-composited into a padded canvas: this is what keeps
    generation at a few thousand patches per second-core.
    """
    margin = 1.5 * scale + 1.0
    extent = params[:, 2] * (1.0 + params[:, 5] + params[:, 6])
    reach = int(math.ceil(float(extent.max()) + margin)) if len(params) else 0
    # Nuclei whose window misses the patch would only cost time.
    keep = (
        (params[:, 0] > -reach) & (params[:, 0] < size + reach)
        & (params[:, 1] > -reach) & (params[:, 1] < size + reach)
    )
    params = params[keep]
    if len(params) == 0:
        return np.zeros((size, size))

    # float32 halves the memory traffic; the result is quantised to uint8 anyway.
    p = params.astype(np.float32)
    cx, cy, a, b, th, a2, a3, p2, p3, dark, ves = (p[:, k] for k in range(11))
    ix, iy = np.floor(cx), np.floor(cy)
    offs = np.arange(-reach, reach + 1, dtype=np.float32)
    # Window coordinates stay separable (N,1,W) and (N,W,1) until the rotation, so most
    # arithmetic runs on small arrays.
    dx = (offs[None, :] + (ix + 0.5 - cx)[:, None])[:, None, :]
    dy = (offs[None, :] + (iy + 0.5 - cy)[:, None])[:, :, None]
    cos, sin = np.cos(th), np.sin(th)
    u = dx * (cos / a)[:, None, None] + dy * (sin / a)[:, None, None]
    v = dy * (cos / b)[:, None, None] - dx * (sin / b)[:, None, None]
    uu, vv = u * u, v * v
    r2 = uu + vv + np.float32(1e-12)
    r = np.sqrt(r2)
    # Boundary radius 1 + a2*cos(2 phi + p2) + a3*cos(3 phi + p3), with the harmonics
    # written as polynomials in u, v: cheaper than arctan2 followed by cos.
    k2c, k2s = (a2 * np.cos(p2))[:, None, None], (a2 * np.sin(p2))[:, None, None]
    k3c, k3s = (a3 * np.cos(p3))[:, None, None], (a3 * np.sin(p3))[:, None, None]
    second = (k2c * (uu - vv) - k2s * 2 * u * v) / r2
    third = (k3c * u * (uu - 3 * vv) - k3s * v * (3 * uu - vv)) / (r2 * r)
    boundary = 1.0 + second + third
    inside_px = (boundary - r) * b[:, None, None]  # roughly pixels inside the edge
    # Anti-aliased edge about one pixel wide whatever the nucleus size.
    edge = np.clip(inside_px / (0.6 * scale) + 0.5, 0.0, 1.0)
    # Vesicular chromatin: pale centre, dark rim (open chromatin of tumour nuclei).
    rel = np.minimum(r / boundary, 1.0)
    h_win = edge * (dark[:, None, None] * (1.0 - ves[:, None, None] * (1.0 - rel * rel)))

    pad = 2 * reach + 1  # a kept window may start up to 2*reach left of the patch
    width = size + 2 * pad
    cols = (ix.astype(np.int64) + pad)[:, None] + np.arange(-reach, reach + 1)[None, :]
    rows = (iy.astype(np.int64) + pad)[:, None] + np.arange(-reach, reach + 1)[None, :]
    flat = (rows[:, :, None] * width + cols[:, None, :]).ravel()
    return _composite_max(h_win, flat, width, pad, size)


def _composite_max(
    windows: np.ndarray, flat: np.ndarray, width: int, pad: int, size: int
) -> np.ndarray:
    # Overlapping nuclei take the darker value rather than adding up to black blotches.
    canvas = np.zeros(width * width)
    np.maximum.at(canvas, flat, windows.ravel().astype(np.float64))
    return canvas.reshape(width, width)[pad : pad + size, pad : pad + size]


def _punch_fat(
    e_map: np.ndarray, h_map: np.ndarray, xx: np.ndarray, yy: np.ndarray,
    centres: np.ndarray, radii: np.ndarray, scale: float,
) -> None:
    """Clear round vacuoles (adipocytes, lumina) to near-white, leaving a thin membrane."""
    for (cx, cy), r in zip(centres, radii):
        d = np.hypot(xx - cx, yy - cy) - r
        inside = np.clip(0.5 - d / scale, 0.0, 1.0)
        membrane = np.exp(-((d / (0.7 * scale)) ** 2))
        e_map *= 1.0 - inside
        e_map += 0.5 * membrane
        h_map *= 1.0 - inside


def _paint_disc(
    target: np.ndarray, xx: np.ndarray, yy: np.ndarray, cx: float, cy: float, r: float,
    *, add: float,
) -> None:
    target += add * np.clip(r - np.hypot(xx - cx, yy - cy), 0.0, 1.0)


def _lattice_noise(rng: np.random.Generator, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Value noise in [-1, 1] sampled at lattice coordinates (u, v) (bilinear)."""
    u0, v0 = np.floor(u), np.floor(v)
    iu, iv = (u0 - u0.min()).astype(int), (v0 - v0.min()).astype(int)
    grid = rng.uniform(-1.0, 1.0, (int(iv.max()) + 2, int(iu.max()) + 2))
    fu, fv = u - u0, v - v0
    # Smoothstep weights hide the lattice's straight seams.
    fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
    top = grid[iv, iu] * (1 - fu) + grid[iv, iu + 1] * fu
    bottom = grid[iv + 1, iu] * (1 - fu) + grid[iv + 1, iu + 1] * fu
    return top * (1 - fv) + bottom * fv


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Band-limited noise in about [-1, 1]: a coarse random grid, bilinearly upsampled."""
    grid = rng.uniform(-1.0, 1.0, (cells + 1, cells + 1))
    i, f = _interp_index(size, cells)
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


@functools.lru_cache(maxsize=32)
def _interp_index(size: int, cells: int) -> tuple[np.ndarray, np.ndarray]:
    t = (np.arange(size) + 0.5) * (cells / size)
    i = np.minimum(t.astype(int), cells - 1)
    f = t - i
    i.flags.writeable = f.flags.writeable = False  # cached and shared between patches
    return i, f


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    yy.flags.writeable = xx.flags.writeable = False  # cached and shared between patches
    return yy, xx


def _gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur over the first two axes, edges replicated.

    Shifted slices rather than a matrix product: BLAS would run multi-threaded on
    these tiny arrays (slow on a busy machine) and its summation order could vary
    with the thread count, breaking bit-identical output.
    """
    radius = max(1, math.ceil(2.5 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps /= taps.sum()
    n_y, n_x = img.shape[:2]
    padded = np.concatenate([img[:1]] * radius + [img] + [img[-1:]] * radius, axis=0)
    out = taps[0] * padded[:n_y]
    for k in range(1, len(taps)):
        out += taps[k] * padded[k : k + n_y]
    padded = np.concatenate([out[:, :1]] * radius + [out] + [out[:, -1:]] * radius, axis=1)
    out = taps[0] * padded[:, :n_x]
    for k in range(1, len(taps)):
        out += taps[k] * padded[:, k : k + n_x]
    return out


# --------------------------------------------------------------------------- helpers


def _check_seed(seed: int) -> None:
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def _unit(v: np.ndarray) -> np.ndarray:
    v = np.abs(v)  # absorbance cannot be negative
    return v / np.linalg.norm(v)


def _as_triple(v: np.ndarray) -> tuple[float, float, float]:
    return (float(v[0]), float(v[1]), float(v[2]))
