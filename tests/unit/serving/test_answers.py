"""Answers from probabilities: TTA views and their mean, labels and the review band."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.serving.answers import (ModelInfo, predictions, review_band, tta_mean,
                                      tta_views)


def _info(threshold: float = 0.3) -> ModelInfo:
    return ModelInfo(name="m", version="2", precision="f32", sha256="a" * 64,
                     threshold=threshold, class_names=("benign", "tumour"),
                     input={"size": 4}, ref="m@2")


def test_tta_views_are_the_eight_symmetries_of_the_square():
    patch = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    views = tta_views(patch)
    assert views.shape == (8, 4, 4, 3)
    assert np.array_equal(views[0], patch[0])
    distinct = {v.tobytes() for v in views}
    assert len(distinct) == 8
    expected = {np.rot90(patch[0], k).tobytes() for k in range(4)}
    expected |= {np.rot90(patch[0], k)[:, ::-1].tobytes() for k in range(4)}
    assert distinct == expected


def test_tta_mean_inverts_the_view_order_for_several_patches():
    patches = np.stack([np.full((4, 4, 3), i, np.uint8) for i in range(3)])
    views = tta_views(patches)
    probs = views[:, 0, 0, 0].astype(np.float64) / 10 + np.repeat(np.arange(8), 3) / 100
    assert tta_mean(probs, 3) == pytest.approx([0.035, 0.135, 0.235])


def test_labels_use_the_threshold_and_review_marks_the_band():
    answers = predictions(np.array([0.05, 0.2, 0.3, 0.39, 0.41, 0.9]), _info(0.3), 0.1)
    assert [a["label"] for a in answers] == [0, 0, 1, 1, 1, 1]
    assert [a["label_name"] for a in answers][:2] == ["benign", "benign"]
    assert [a["needs_review"] for a in answers] == [False, True, True, True, False, False]
    assert review_band(0.05, 0.1) == (0.0, pytest.approx(0.15))
    assert review_band(0.95, 0.1) == (pytest.approx(0.85), 1.0)


def test_model_info_round_trips_through_a_dict():
    info = _info()
    assert ModelInfo.from_dict(info.to_dict()) == info
    assert info.public() == {"name": "m", "version": "2", "precision": "f32",
                             "sha256": "a" * 64, "calibration": "none"}
