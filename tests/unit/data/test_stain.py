"""Stain normalisation (patchray.data.stain) against the methods' published properties, on
synthetic Beer-Lambert H&E whose stain vectors are known (patchray.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.data import stain
from patchray.data.synthetic import patch_pixels, patient_stain

SIZE = 32


def patient_patches(patient: int, n: int = 48, seed: int = 0) -> np.ndarray:
    return np.stack([patch_pixels(seed, patient, i, i % 2, SIZE) for i in range(n)])


@pytest.fixture(scope="module")
def reference() -> np.ndarray:
    return patient_patches(0, 128)


@pytest.fixture(scope="module")
def macenko(reference):
    return stain.fit_macenko(reference)


@pytest.fixture(scope="module")
def reinhard(reference):
    return stain.fit_reinhard(reference)


def mean_colour(pixels: np.ndarray) -> np.ndarray:
    return pixels.reshape(-1, 3).astype(np.float64).mean(axis=0)


@pytest.mark.parametrize("patient", [0, 1, 2, 3])
def test_macenko_recovers_the_stain_vectors_the_patches_were_rendered_with(patient):
    matrix, max_c = stain.fit_macenko(patient_patches(patient))
    truth = patient_stain(patient, 0)
    h_cos = float(matrix[0] @ np.asarray(truth.h_od))  # both unit vectors
    e_cos = float(matrix[1] @ np.asarray(truth.e_od))
    assert h_cos > 0.98 and e_cos > 0.98, (h_cos, e_cos)
    assert np.allclose(np.linalg.norm(matrix, axis=1), 1.0) and (max_c > 0).all()


def test_normalising_the_reference_itself_changes_it_little(reference, macenko, reinhard):
    # One image as its own reference: Macenko maps it back onto itself (~1 grey level).
    one = reference[:1]
    m1, c1 = stain.fit_macenko(one)
    assert np.abs(stain.macenko_normalise(one, m1, c1).astype(int) - one).mean() < 2.5
    mu, sd = stain.fit_reinhard(one)
    assert np.abs(stain.reinhard_normalise(one, mu, sd).astype(int) - one).mean() < 1.5
    # The reference set, patch by patch: its colour stays near where it was. Measured:
    # Reinhard 2.4/1.5/1.4 levels; Macenko +8.3/+2.4/+4.5 (R/G/B): the synthetic glass (~242, OD ~0.05 in
    # every channel) lies off the H-E plane and unmixing drops it, so light pixels whiten.
    shift = np.abs(mean_colour(stain.reinhard_normalise(reference, *reinhard))
                   - mean_colour(reference))
    assert shift.max() < 4.0, shift
    shift = np.abs(mean_colour(stain.macenko_normalise(reference, *macenko))
                   - mean_colour(reference))
    assert shift.max() < 15.0, shift
    # And normalising twice is (almost) normalising once.
    once = stain.macenko_normalise(reference, *macenko)
    assert np.abs(stain.macenko_normalise(once, *macenko).astype(int) - once).mean() < 8.0


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_two_patients_stained_differently_are_closer_after_normalisation(
        method, macenko, reinhard):
    a, b = patient_patches(3), patient_patches(5)
    apply = ((lambda x: stain.macenko_normalise(x, *macenko)) if method == "macenko"
             else (lambda x: stain.reinhard_normalise(x, *reinhard)))
    before = np.abs(mean_colour(a) - mean_colour(b)).sum()
    after = np.abs(mean_colour(apply(a)) - mean_colour(apply(b))).sum()
    assert before > 40.0  # the synthetic patients' stains really differ
    assert after < 0.4 * before, (before, after)


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_glass_padding_and_odd_patches_pass_unchanged_or_stay_finite(method, macenko, reinhard):
    apply = ((lambda x: stain.macenko_normalise(x, *macenko)) if method == "macenko"
             else (lambda x: stain.reinhard_normalise(x, *reinhard)))
    white = np.full((2, SIZE, SIZE, 3), 255, np.uint8)
    glass = np.full((1, SIZE, SIZE, 3), 242, np.uint8)  # slightly grey glass: OD 0.05
    padded = np.full((1, SIZE, SIZE, 3), 255, np.uint8)  # an edge patch: 3x3 of tissue
    padded[0, :3, :3] = patient_patches(1, 1)[0, 10:13, 10:13]
    for patches in (white, glass, padded):
        np.testing.assert_array_equal(apply(patches), patches)
    odd = np.stack([np.zeros((SIZE, SIZE, 3), np.uint8),  # black: OD saturated, rank 1
                    np.full((SIZE, SIZE, 3), (200, 60, 90), np.uint8),  # one flat colour
                    np.full((SIZE, SIZE, 3), 128, np.uint8)])  # grey: a single OD direction
    with np.errstate(all="raise"):  # no NaN, overflow or division by zero on the way
        out = apply(odd)
    assert out.dtype == np.uint8 and out.shape == odd.shape


@pytest.mark.parametrize("method", ["macenko", "reinhard"])
def test_output_is_uint8_of_the_input_shape_deterministic_and_per_patch(
        method, macenko, reinhard):
    apply = ((lambda x: stain.macenko_normalise(x, *macenko)) if method == "macenko"
             else (lambda x: stain.reinhard_normalise(x, *reinhard)))
    batch = np.concatenate([patient_patches(2, 6), np.full((1, SIZE, SIZE, 3), 255, np.uint8)])
    out = apply(batch)
    assert out.dtype == np.uint8 and out.shape == batch.shape
    np.testing.assert_array_equal(out, apply(batch.copy()))
    # A patch's output depends on that patch alone: batching never changes it.
    for i in (0, 3, 6):
        np.testing.assert_array_equal(apply(batch[i:i + 1]), out[i:i + 1])
    assert apply(batch[:0]).shape == (0, SIZE, SIZE, 3)


def test_fitting_on_glass_is_refused_and_bad_input_named():
    white = np.full((4, SIZE, SIZE, 3), 255, np.uint8)
    with pytest.raises(ValueError, match="tissue"):
        stain.fit_macenko(white)
    with pytest.raises(ValueError, match="tissue"):
        stain.fit_reinhard(white)
    with pytest.raises(ValueError, match=r"uint8 \(N, H, W, 3\)"):
        stain.macenko_normalise(white.astype(np.float32), np.eye(2, 3), np.ones(2))


def test_masked_percentile_is_numpys_percentile_row_by_row():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(5, 40))
    mask = rng.random((5, 40)) < 0.6
    mask[4] = False
    got = stain.masked_percentile(values, mask, 7.0)
    for i in range(4):
        assert got[i] == pytest.approx(np.percentile(values[i][mask[i]], 7.0))
    assert np.isnan(got[4])


def test_lab_round_trip_is_lossless_on_uint8():
    pixels = np.random.default_rng(1).integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    np.testing.assert_array_equal(stain.lab_to_rgb(stain.rgb_to_lab(pixels)), pixels)
