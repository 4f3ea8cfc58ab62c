"""HED stain augmentation and the stain stage of prepare_training_batch."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.data.records import encode_png
from patchray.data.synthetic import patch_pixels
from patchray.data.transforms import (
    HED_FROM_RGB,
    HED_MAX,
    HedParams,
    apply_hed,
    draw_hed_params,
    prepare_training_batch,
    to_pixels,
)
from patchray.inference.preprocess import StainNormalisation

SIZE = 32


def patches(n: int, patient: int = 1) -> np.ndarray:
    return np.stack([patch_pixels(0, patient, i, i % 2, SIZE) for i in range(n)])


def test_the_hed_matrix_is_scikit_images():
    color = pytest.importorskip("skimage.color")
    np.testing.assert_allclose(HED_FROM_RGB, color.hed_from_rgb, atol=1e-12)


def test_no_jitter_is_the_identity_and_draws_stay_in_the_published_ranges():
    x = patches(4)
    identity = HedParams(alpha=np.ones((4, 3)), beta=np.zeros((4, 3)))
    assert np.abs(to_pixels(apply_hed(x, identity)).astype(int) - x).max() <= 1
    p = draw_hed_params(1000, np.random.default_rng(0), 0.5)
    s = 0.5 * HED_MAX
    assert p.alpha.shape == p.beta.shape == (1000, 3)
    assert (np.abs(p.alpha - 1) <= s).all() and (np.abs(p.beta) <= s).all()
    assert np.abs(p.beta).max() > 0.9 * s
    with pytest.raises(ValueError, match="stain augment strength"):
        draw_hed_params(2, np.random.default_rng(0), 1.5)


def test_hed_jitter_matches_scikit_images_deconvolution_where_it_does_not_clip():
    color = pytest.importorskip("skimage.color")
    x = patches(2)
    p = draw_hed_params(2, np.random.default_rng(3), 1.0)
    got = apply_hed(x, p)
    for i in range(2):
        hed = color.rgb2hed(x[i])  # skimage clips negative concentrations to 0
        unclipped = (np.log(np.maximum(x[i] / 255.0, 1e-6)) / np.log(1e-6)) @ HED_FROM_RGB
        ok = (unclipped >= 0).all(axis=-1)
        # skimage >= 0.19 scales concentrations by 1 / -ln(1e-6); beta is in ln-OD units
        want = color.hed2rgb(hed * p.alpha[i] + p.beta[i] / -np.log(1e-6))
        np.testing.assert_allclose(got[i][ok], want[ok], atol=1e-4)


def rows(pixels: np.ndarray) -> dict[str, np.ndarray]:
    n = len(pixels)
    return {"image": np.array([encode_png(p) for p in pixels], dtype=object),
            "label": np.arange(n) % 2, "height": np.full(n, SIZE), "width": np.full(n, SIZE)}


@pytest.fixture(scope="module")
def contract_stain() -> StainNormalisation:
    return StainNormalisation.fit("macenko", patches(64, patient=0), fitted_on="test")


def test_the_stain_stage_normalises_before_augmenting_and_both_views_alike(contract_stain):
    x = patches(6)
    batch = rows(x)
    kwargs = {"size": SIZE, "weights": {0: 1.0, 1: 1.0}, "seed": 5, "stain": contract_stain}
    plain = prepare_training_batch(batch, augment_patches=False, **kwargs)
    np.testing.assert_array_equal(plain["x"], contract_stain.apply(x))
    # A context view equal to the patch stays equal through stain + HED + geometry/colour.
    both = prepare_training_batch({**batch, "context_image": batch["image"]},
                                  augment_patches=True, stain_augment=1.0, **kwargs)
    np.testing.assert_array_equal(both["x"], both["context"])
    assert not np.array_equal(both["x"], plain["x"])


def test_stain_augment_zero_keeps_todays_augmentation_draw_for_draw(contract_stain):
    batch = rows(patches(5))
    kwargs = {"size": SIZE, "weights": {0: 1.0, 1: 1.0}, "seed": 11, "augment_patches": True}
    before = prepare_training_batch(batch, **kwargs)["x"]
    np.testing.assert_array_equal(prepare_training_batch(batch, stain_augment=0.0, **kwargs)["x"],
                                  before)
    jittered = prepare_training_batch(batch, stain_augment=1.0, **kwargs)["x"]
    assert jittered.dtype == np.uint8 and jittered.shape == before.shape
    assert 0 < np.abs(jittered.astype(int) - before).mean() < 10
