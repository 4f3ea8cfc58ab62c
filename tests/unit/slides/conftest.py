"""Shared slide fixtures: synthetic pyramidal slides (drawn once per session, read-only) and
a "darkness" model: a tiny OpenVINO graph with a card, no TensorFlow and no training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchray.slides.synthetic import SyntheticSlide, write_synthetic_slide

DARKNESS_SIZE = 32


@pytest.fixture(scope="session")
def synthetic_slide(tmp_path_factory) -> SyntheticSlide:
    return write_synthetic_slide(tmp_path_factory.mktemp("slides") / "syn-p01.tif")


@pytest.fixture(scope="session")
def small_slide(tmp_path_factory) -> SyntheticSlide:
    """A quarter-size slide (1024x768, tumour x 256..383, y 256..447) for quick jobs."""
    return write_synthetic_slide(tmp_path_factory.mktemp("small-slide") / "syn-s01.tif",
                                 width=1024, height=768)


def write_darkness_model(folder: Path, *, size: int = DARKNESS_SIZE, threshold: float = 0.5,
                         mpp: float | None = None) -> Path:
    """A version folder whose model says p = sigmoid(40 * (0.63 - mean pixel)): the
    synthetic tumour's dense dark nuclei (mean ~0.55) score ~0.97, benign stroma (~0.72)
    ~0.03, glass ~0: a model that finds the synthetic slide's tumour, for checking that the
    heat map and its polygons land where the tumour is."""
    import openvino as ov
    import openvino.opset13 as ops

    from patchray.inference.preprocess import Preprocess
    from patchray.registry.card import ModelCard, PrecisionRecord, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    x = ops.parameter([-1, size, size, 3], np.float32, name="patches")
    mean = ops.reduce_mean(x, np.array([1, 2, 3], dtype=np.int64), keep_dims=True)
    logit = ops.multiply(ops.subtract(np.float32(0.63), mean), np.float32(40.0))
    out = ops.reshape(ops.sigmoid(logit), np.array([-1, 1], dtype=np.int64), special_zero=False)
    ov.save_model(ov.Model([out], [x], "darkness"), folder / "model.xml")
    card = ModelCard(
        name="darkness-synthetic", version=1, architecture="darkness", dataset="synthetic",
        created="2026-12-02T00:00:00+00:00",
        input=Preprocess(size=size, microns_per_pixel=mpp),
        threshold_rule={"rule": "fixed"},
        precisions={"f32": PrecisionRecord(file="model.xml", inference_hint="f32", passed=True,
                                           threshold=threshold)},
        serving_precision="f32", patchray_version="0.1.0",
        files={n: sha256_file(folder / n) for n in ("model.xml", "model.bin")})
    (folder / "card.json").write_text(card.model_dump_json(indent=1))
    return folder


@pytest.fixture(scope="session")
def darkness_model(tmp_path_factory) -> Path:
    return write_darkness_model(tmp_path_factory.mktemp("models") / "darkness" / "1")
