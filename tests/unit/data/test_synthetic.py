"""Tests for the synthetic H&E patch generator (patchray.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.data.synthetic import (
    StainStyle,
    SyntheticPatch,
    generate_patch,
    generate_patches,
    patient_stain,
)

# Macenko reference stain vectors: the tests deconvolve colour with fixed vectors, as a
# pipeline would, not with the per-patient ones the generator used.
_H_OD = np.array([0.5626, 0.7201, 0.4062])
_E_OD = np.array([0.2159, 0.8012, 0.5581])


def _auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Rank-based (Mann-Whitney) ROC AUC, ties counted as half."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(bool)
    order = np.argsort(scores, kind="stable")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    # Average the ranks of tied scores.
    uniq, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    if len(uniq) < len(scores):
        sums = np.bincount(inverse, weights=ranks)
        ranks = (sums / counts)[inverse]
    n_pos, n_neg = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _logistic_scores(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Fit a logistic regression (Newton/IRLS, tiny ridge) and return in-sample scores."""
    x = (features - features.mean(axis=0)) / (features.std(axis=0) + 1e-9)
    x = np.column_stack([x, np.ones(len(x))])
    w = np.zeros(x.shape[1])
    for _ in range(30):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (p - labels) + 1e-3 * w
        hess = (x * (p * (1 - p))[:, None]).T @ x + 1e-3 * np.eye(x.shape[1])
        w -= np.linalg.solve(hess, grad)
    return x @ w


def _erode(mask: np.ndarray) -> np.ndarray:
    """3x3 binary erosion of a batch of masks (N, H, W); the border counts as background."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    h, w = mask.shape[1:]
    out = np.ones_like(mask)
    for dy in range(3):
        for dx in range(3):
            out &= padded[:, dy : dy + h, dx : dx + w]
    return out


def _large_nucleus_fraction(pixels: np.ndarray) -> np.ndarray:
    """Fraction of each patch covered by the cores of nucleus-sized haematoxylin blobs.

    Haematoxylin density by colour deconvolution, thresholded relative to the patch's
    own densest nuclei (so stain strength does not matter), then eroded so that small
    lymphocytes and thin fibroblasts vanish and only large nuclei remain.
    """
    od = -np.log((pixels.astype(np.float64) + 1.0) / 256.0)
    haem = (od @ np.linalg.pinv(np.stack([_H_OD, _E_OD])))[..., 0]
    threshold = 0.7 * np.percentile(haem, 99, axis=(1, 2), keepdims=True)
    return _erode(haem > threshold).mean(axis=(1, 2))


@pytest.fixture(scope="module")
def dataset() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    patches = list(
        generate_patches(num_patients=6, patches_per_patient=250, positive_fraction=0.5, seed=11)
    )
    pixels = np.stack([p.pixels for p in patches])
    labels = np.array([p.label for p in patches])
    patients = np.array([p.patient_id for p in patches])
    return pixels, labels, patients


def test_generation_is_deterministic() -> None:
    first = list(generate_patches(num_patients=2, patches_per_patient=6, seed=5))
    again = list(generate_patches(num_patients=2, patches_per_patient=6, seed=5))
    other = list(generate_patches(num_patients=2, patches_per_patient=6, seed=6))

    for a, b in zip(first, again, strict=True):
        assert np.array_equal(a.pixels, b.pixels)
        assert (a.label, a.patient_id, a.x, a.y) == (b.label, b.patient_id, b.x, b.y)
    assert not any(np.array_equal(a.pixels, c.pixels) for a, c in zip(first, other))
    assert patient_stain(1, 5) == patient_stain(1, 5) != patient_stain(1, 6)


def test_patches_do_not_depend_on_how_many_patients_are_generated() -> None:
    fewer = list(generate_patches(num_patients=1, patches_per_patient=5, seed=2))
    more = list(generate_patches(num_patients=3, patches_per_patient=5, seed=2))
    for a, b in zip(fewer, more[:5], strict=True):
        assert np.array_equal(a.pixels, b.pixels)


def test_generate_patch_is_driven_only_by_its_generator() -> None:
    stain = patient_stain(0, 0)
    for label in (0, 1):
        a = generate_patch(np.random.default_rng(42), label, stain, size=50)
        b = generate_patch(np.random.default_rng(42), label, stain, size=50)
        assert np.array_equal(a, b)


@pytest.mark.parametrize("size", [50, 96])
def test_shapes_dtypes_and_ids(size: int) -> None:
    patches = list(
        generate_patches(num_patients=3, patches_per_patient=40, size=size, positive_fraction=0.3)
    )
    assert len(patches) == 120
    assert all(isinstance(p, SyntheticPatch) for p in patches)
    assert all(p.pixels.shape == (size, size, 3) and p.pixels.dtype == np.uint8 for p in patches)
    assert [p.patient_id for p in patches[::40]] == ["synth-p00", "synth-p01", "synth-p02"]
    assert {p.label for p in patches} == {0, 1}

    for pid in {p.patient_id for p in patches}:
        mine = [p for p in patches if p.patient_id == pid]
        assert all(p.x % size == 0 and p.y % size == 0 and p.x >= 0 and p.y >= 0 for p in mine)
        assert len({(p.x, p.y) for p in mine}) == len(mine)  # one patch per grid cell
        # Each patient's fraction is the requested one shifted by at most 0.1.
        assert 0.3 - 0.1 - 0.03 <= np.mean([p.label for p in mine]) <= 0.3 + 0.1 + 0.03


def test_positive_fraction_extremes_are_exact() -> None:
    assert {p.label for p in generate_patches(2, 10, positive_fraction=0.0)} == {0}
    assert {p.label for p in generate_patches(2, 10, positive_fraction=1.0)} == {1}


def test_positive_fraction_is_honoured_overall() -> None:
    labels = [p.label for p in generate_patches(8, 50, size=50, positive_fraction=0.3, seed=3)]
    assert abs(np.mean(labels) - 0.3) < 0.06


def test_invalid_arguments_are_rejected() -> None:
    stain = patient_stain(0, 0)
    with pytest.raises(ValueError, match="label"):
        generate_patch(np.random.default_rng(0), 2, stain)
    with pytest.raises(ValueError, match="seed"):
        next(generate_patches(1, 1, seed=-1))
    with pytest.raises(ValueError, match="positive_fraction"):
        next(generate_patches(1, 1, positive_fraction=1.5))


def test_patients_have_distinct_stain(
    dataset: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    pixels, labels, patients = dataset
    assert isinstance(patient_stain(0, 11), StainStyle)
    assert len({patient_stain(i, 11) for i in range(6)}) == 6

    mean_rgb = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    ids = sorted(set(patients))
    # Compare patients within one class so tumour burden does not drive the difference.
    per_patient = np.array([mean_rgb[(patients == p) & (labels == 0)].mean(axis=0) for p in ids])
    gaps = np.linalg.norm(per_patient[:, None] - per_patient[None, :], axis=-1)
    assert gaps[np.triu_indices(len(ids), k=1)].min() > 2.0
    # The stain shift between patients is larger than the colour shift between classes.
    class_gap = np.linalg.norm(mean_rgb[labels == 1].mean(axis=0) - mean_rgb[labels == 0].mean(0))
    assert np.median(gaps[np.triu_indices(len(ids), k=1)]) > 2 * class_gap


def test_mean_colour_does_not_separate_classes(
    dataset: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    pixels, labels, _ = dataset
    mean_rgb = pixels.reshape(len(pixels), -1, 3).mean(axis=1)
    colour_auc = _auc(_logistic_scores(mean_rgb, labels), labels)
    structure_auc = _auc(_large_nucleus_fraction(pixels), labels)

    assert colour_auc < 0.85, f"mean colour alone separates the classes (AUC {colour_auc:.3f})"
    # The signal is in structure: a crude nucleus-size feature beats any colour threshold.
    assert structure_auc > 0.9, f"structure feature AUC only {structure_auc:.3f}"
    assert structure_auc > colour_auc + 0.1
