import numpy as np
import pytest

from patchray.data.records import encode_png
from patchray.data.transforms import (
    BRIGHTNESS_MAX,
    apply_augment,
    augment,
    class_weights,
    decode_patches,
    draw_augment_params,
    fit_to_size,
    hue_rotation,
    normalise,
    prepare_training_batch,
)
from patchray.errors import DataError


def test_edge_patch_is_padded_white_not_stretched():
    patch = np.zeros((32, 50, 3), dtype=np.uint8)
    out = fit_to_size(patch, 50)
    assert out.shape == (50, 50, 3)
    assert (out[:32] == 0).all() and (out[32:] == 255).all()


def test_larger_patch_is_resized_to_model_size():
    assert fit_to_size(np.zeros((96, 96, 3), dtype=np.uint8), 50).shape == (50, 50, 3)


def test_decode_patches_batches_mixed_sizes():
    imgs = [encode_png(np.full((50, 50, 3), 10, np.uint8)), encode_png(np.full((32, 50, 3), 10, np.uint8))]
    batch = decode_patches(imgs, 50)
    assert batch.shape == (2, 50, 50, 3) and batch.dtype == np.uint8


def test_normalise_scales_to_unit_range():
    x = normalise(np.array([[[[0, 128, 255]]]], dtype=np.uint8))
    assert x.dtype == np.float32
    np.testing.assert_allclose(x.ravel(), [0.0, 128 / 255, 1.0], rtol=1e-6)


def test_augment_keeps_range_shape_and_changes_pixels():
    rng = np.random.default_rng(0)
    x = rng.random((16, 50, 50, 3)).astype(np.float32)
    out = augment(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.allclose(out, x)


def test_augment_geometry_is_orthogonal():
    # A uniform grey patch: geometry cannot change it, so only colour jitter may move it,
    # and brightness stays within the published maximum.
    x = np.full((32, 8, 8, 3), 0.5, dtype=np.float32)
    out = augment(x, np.random.default_rng(2))
    per_patch = out.reshape(32, -1)
    assert np.allclose(per_patch.std(axis=1), 0, atol=1e-5)
    assert np.abs(per_patch.mean(axis=1) - 0.5).max() <= BRIGHTNESS_MAX + 1e-5


def test_balanced_class_weights_equalise_classes():
    w = class_weights({"0": 720, "1": 280}, "balanced")
    assert w[0] * 720 == pytest.approx(w[1] * 280)
    assert class_weights({"0": 720, "1": 280}, "none") == {0: 1.0, 1: 1.0}


def test_prepare_training_batch_outputs_model_inputs():
    imgs = np.array([encode_png(np.full((50, 50, 3), 200, np.uint8))] * 4, dtype=object)
    out = prepare_training_batch(
        {"image": imgs, "label": np.array([0, 1, 0, 1], np.int8)},
        size=50, augment_patches=False, weights={0: 0.5, 1: 2.0},
    )
    assert out["x"].shape == (4, 50, 50, 3)
    np.testing.assert_allclose(out["w"], [0.5, 2.0, 0.5, 2.0])
    assert out["x"].dtype == np.uint8  # normalised by the training worker, not in Ray Data
    np.testing.assert_array_equal(out["x"][0, 0, 0], [200] * 3)


def test_raw_patches_decode_to_the_same_pixels_as_png():
    rng = np.random.default_rng(3)
    pixels = [rng.integers(0, 256, (50, 50, 3), dtype=np.uint8),
              rng.integers(0, 256, (32, 50, 3), dtype=np.uint8)]
    png = decode_patches([encode_png(p) for p in pixels], 50)
    raw = decode_patches([p.tobytes() for p in pixels], 50, encoding="raw",
                         heights=[50, 32], widths=[50, 50])
    np.testing.assert_array_equal(raw, png)
    full = decode_patches([pixels[0].tobytes()] * 3, 50, encoding="raw")
    assert full.shape == (3, 50, 50, 3) and full.flags.writeable
    np.testing.assert_array_equal(full[2], pixels[0])


def test_raw_patches_of_the_wrong_length_are_refused():
    with pytest.raises(DataError, match="batch item 1: .* expected 50x50x3"):
        decode_patches([bytes(7500), bytes(100)], 50, encoding="raw")
    with pytest.raises(DataError, match="unknown patch encoding"):
        decode_patches([bytes(7500)], 50, encoding="jpeg2000")


def test_augment_of_uint8_pixels_equals_augment_of_normalised_floats():
    pixels = np.random.default_rng(4).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)
    params = draw_augment_params(8, np.random.default_rng(5))
    np.testing.assert_allclose(apply_augment(pixels, params),
                               apply_augment(normalise(pixels), params), atol=1e-6)


def test_hue_rotation_keeps_greys_and_turns_a_full_circle():
    m = hue_rotation(np.array([0.0, 0.04, 1.0]))
    np.testing.assert_allclose(m @ np.ones(3), np.ones((3, 3)), atol=1e-12)
    np.testing.assert_allclose(m[0], np.eye(3), atol=1e-12)
    np.testing.assert_allclose(m[2], np.eye(3), atol=1e-12)
    # Pure red turned by +0.04 of the circle moves towards yellow (HSV hue increases).
    r, g, b = m[1] @ np.array([1.0, 0.0, 0.0])
    assert g > 0 and b < 1e-2


def test_prepare_training_batch_reads_raw_records_with_their_native_size():
    edge = np.full((32, 50, 3), 200, np.uint8)
    out = prepare_training_batch(
        {"image": np.array([edge.tobytes()], dtype=object), "label": np.array([1], np.int8),
         "height": np.array([32], np.int32), "width": np.array([50], np.int32)},
        size=50, augment_patches=False, weights={0: 1.0, 1: 1.0}, encoding="raw",
    )
    assert out["x"].shape == (1, 50, 50, 3)
    assert out["x"].dtype == np.uint8  # normalised by the training worker, not in Ray Data
    np.testing.assert_array_equal(out["x"][0, 0, 0], [200] * 3)
    np.testing.assert_array_equal(out["x"][0, 40, 0], [255] * 3)  # padded white below the edge


def test_augment_strength_scales_the_colour_jitter_and_keeps_the_default_draws():
    rng = lambda: np.random.default_rng(11)  # noqa: E731
    full, default = draw_augment_params(64, rng(), 1.0), draw_augment_params(64, rng())
    assert all(np.array_equal(getattr(full, f), getattr(default, f))
               for f in ("quarter_turns", "mirror", "brightness", "contrast", "hue", "saturation"))
    half = draw_augment_params(64, rng(), 0.5)
    assert np.abs(half.brightness).max() <= BRIGHTNESS_MAX / 2 and half.contrast.min() >= 0.75
    # Strength 0: rotations and flips only, no colour change at all.
    x = np.random.default_rng(3).integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    none = draw_augment_params(16, rng(), 0.0)
    out = apply_augment(x, none)
    moved = np.stack([np.rot90(p, k=k)[:, ::-1] if m else np.rot90(p, k=k)
                      for p, k, m in zip(x, none.quarter_turns, none.mirror)])
    assert np.allclose(out, moved / 255.0, atol=1e-6)
    with pytest.raises(ValueError, match="strength"):
        draw_augment_params(4, rng(), 1.5)
