"""A predictor loaded from a card serves the calibrated probability of its precision (raw IR
output still available), and the serving answers built from it use that scale throughout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchray.evaluation.calibration import Calibration
from patchray.inference.predictor import PatchPredictor
from patchray.inference.preprocess import Preprocess

SIZE = 8
PLATT = Calibration(method="platt", a=2.0, b=-3.0, fitted_on="val", n=100)


def write_model(folder: Path, calibration: Calibration | None, threshold: float) -> Path:
    """sigmoid(4 * (mean pixel - 0.5)) as an IR, registered with a card."""
    import openvino as ov
    import openvino.opset13 as ops

    from patchray.registry.card import ModelCard, PrecisionRecord, sha256_file

    folder.mkdir(parents=True, exist_ok=True)
    x = ops.parameter([-1, SIZE, SIZE, 3], np.float32, name="patches")
    mean = ops.reduce_mean(x, np.array([1, 2, 3], dtype=np.int64), keep_dims=False)
    out = ops.sigmoid(ops.multiply(ops.subtract(mean, np.float32(0.5)), np.float32(4.0)))
    ov.save_model(ov.Model([out], [x], "mean"), folder / "model.xml")
    card = ModelCard(
        name="mean-synthetic", version=1, architecture="mean", dataset="synthetic",
        created="2026-12-03T00:00:00+00:00", input=Preprocess(size=SIZE),
        threshold_rule={"rule": "sensitivity", "min_sensitivity": 0.95},
        precisions={"f32": PrecisionRecord(file="model.xml", inference_hint="f32", passed=True,
                                           threshold=threshold, calibration=calibration)},
        serving_precision="f32", patchray_version="0.1.0",
        files={n: sha256_file(folder / n) for n in ("model.xml", "model.bin")})
    (folder / "card.json").write_text(card.model_dump_json(indent=1))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("calibrated")
    return {"platt": write_model(root / "platt", PLATT, 0.2),
            "old": write_model(root / "old", None, 0.45)}


@pytest.fixture(scope="module")
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (16, SIZE, SIZE, 3), dtype=np.uint8)


def test_the_predictor_applies_its_precisions_calibration_and_keeps_raw_output(models, pixels):
    predictor = PatchPredictor.from_card(models["platt"])
    assert predictor.calibrated == "platt"
    raw = predictor.predict_pixels(pixels, raw=True)
    bare = PatchPredictor(models["platt"] / "model.xml", Preprocess(size=SIZE))
    np.testing.assert_array_equal(raw, bare.predict_pixels(pixels))  # no card: raw output
    served = predictor.predict_pixels(pixels)
    assert served.dtype == np.float32
    np.testing.assert_array_equal(served, PLATT.apply(raw).astype(np.float32))
    assert not np.allclose(served, raw)
    # the evaluation stage computes the scores the threshold is chosen on the same way
    from patchray.evaluation.evaluate import served_scores

    np.testing.assert_array_equal(served_scores(PLATT, raw), served.astype(np.float64))


def test_a_card_without_calibration_serves_the_raw_output(models, pixels):
    predictor = PatchPredictor.from_card(models["old"])
    assert predictor.calibrated == "none" and predictor.threshold == 0.45
    np.testing.assert_array_equal(predictor.predict_pixels(pixels),
                                  predictor.predict_pixels(pixels, raw=True))


def test_served_answers_carry_the_method_and_label_calibrated_scores(models, pixels):
    from patchray.serving.answers import predictions
    from patchray.serving.model_source import ModelSource

    served = ModelSource(str(models["platt"])).load()
    info = served.info
    assert info.calibration == "platt" and info.public()["calibration"] == "platt"
    assert info.threshold == 0.2
    p = served.predictor.predict_pixels(pixels)
    answers = predictions(p, info, margin=0.05)
    for a, q in zip(answers, p):
        assert a["probability"] == pytest.approx(float(q))
        assert a["label"] == int(q >= 0.2)
        assert a["needs_review"] == bool(0.15 <= q <= 0.25)
    assert ModelSource(str(models["old"])).load().info.calibration == "none"
