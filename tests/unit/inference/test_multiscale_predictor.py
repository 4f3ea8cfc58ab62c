"""A two-input (multi-scale) OpenVINO model behind PatchPredictor and BatchScorer: both
views fed by name, and clear errors when a model gets the wrong number of views. A small
graph built here; no TensorFlow, no training."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.data.records import encode_png
from patchray.errors import ArtifactError
from patchray.inference.predictor import BatchScorer, PatchPredictor
from patchray.inference.preprocess import Preprocess

SIZE = 8
CONTRACT = Preprocess(size=SIZE, context_scale=4.0)


def _ir(folder, *, two: bool = True):
    """sigmoid(mean(patch) - mean(context)), or sigmoid(mean(patch) - 0.5) with one input."""
    import openvino as ov
    import openvino.opset13 as ops

    axes = np.array([1, 2, 3], dtype=np.int64)
    # the context parameter first: the predictor must feed by name, not by position
    context = ops.parameter([-1, SIZE, SIZE, 3], np.float32, name="context")
    patch = ops.parameter([-1, SIZE, SIZE, 3], np.float32, name="patch")
    other = ops.reduce_mean(context, axes, keep_dims=False) if two else np.float32(0.5)
    out = ops.sigmoid(ops.subtract(ops.reduce_mean(patch, axes, keep_dims=False), other))
    path = folder / ("two.xml" if two else "one.xml")
    ov.save_model(ov.Model([out], [context, patch] if two else [patch], "m"), path)
    return path


@pytest.fixture(scope="module")
def irs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ms-ir")
    return _ir(folder), _ir(folder, two=False)


def _expected(patch: np.ndarray, context: np.ndarray) -> np.ndarray:
    d = (patch / 255.0).mean(axis=(1, 2, 3)) - (context / 255.0).mean(axis=(1, 2, 3))
    return 1.0 / (1.0 + np.exp(-d))


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8)


def test_two_views_are_fed_by_name(irs):
    predictor = PatchPredictor(irs[0], CONTRACT)
    assert predictor.multiscale and predictor.input_names == ("patch", "context")
    patch, context = _pixels(5, 0), _pixels(5, 1) // 2
    want = _expected(patch, context)
    np.testing.assert_allclose(predictor.predict_pixels(patch, context), want, atol=1e-5)
    x = CONTRACT.inputs(patch, context)
    assert sorted(x) == ["context", "patch"]
    np.testing.assert_allclose(predictor.predict_arrays(x), want, atol=1e-5)
    np.testing.assert_allclose(predictor.predict_arrays(x["patch"], context=x["context"]),
                               want, atol=1e-5)
    assert predictor.predict_pixels(patch[:0], context[:0]).shape == (0,)


def test_wrong_number_of_views_is_refused(irs):
    two = PatchPredictor(irs[0], CONTRACT)
    one = PatchPredictor(irs[1], Preprocess(size=SIZE))
    x = CONTRACT.to_input(_pixels(2, 0))
    with pytest.raises(ValueError, match="multi-scale model takes two inputs .* pass context="):
        two.predict_arrays(x)
    with pytest.raises(ValueError, match="takes one input \\(patch\\); got a context view"):
        one.predict_arrays(x, context=x)
    with pytest.raises(ValueError, match="2 patches but 1 context views"):
        two.predict_arrays(x, context=x[:1])
    with pytest.raises(ValueError, match="got no context view"):
        two.predict_pixels(_pixels(2, 0))
    with pytest.raises(ValueError, match="expected inputs"):
        two.predict_arrays({"patch": x})


def test_contract_and_ir_must_agree_on_the_inputs(irs):
    with pytest.raises(ArtifactError, match="2 input\\(s\\) .* contract says 1 .*no context_scale"):
        PatchPredictor(irs[0], Preprocess(size=SIZE))
    with pytest.raises(ArtifactError, match="1 input\\(s\\) .* contract says 2 .*context_scale 4"):
        PatchPredictor(irs[1], CONTRACT)


def test_batch_scorer_decodes_and_feeds_the_context_column(irs):
    patch, context = _pixels(4, 2), _pixels(4, 3)
    batch = {"image": np.array([encode_png(p) for p in patch], dtype=object),
             "context_image": np.array([encode_png(c) for c in context], dtype=object),
             "label": np.array([0, 1, 0, 1])}
    scorer = BatchScorer({"f32": (str(irs[0]), "f32")}, CONTRACT.model_dump(mode="json"), "png")
    out = scorer(batch)
    np.testing.assert_allclose(out["probability_f32"], _expected(patch, context), atol=1e-5)
    with pytest.raises(ValueError, match="'context_image' column"):
        scorer({"image": batch["image"], "label": batch["label"]})


def test_contract_round_trips_with_context_scale():
    doc = CONTRACT.model_dump(mode="json")
    assert doc["context_scale"] == 4.0
    assert Preprocess.model_validate(doc) == CONTRACT
    assert Preprocess(size=SIZE).context_scale is None
    assert Preprocess.model_validate({"size": SIZE}).input_names == ("patch",)
    with pytest.raises(ValueError):
        Preprocess(size=SIZE, context_scale=1.0)
    rows = [{"image": encode_png(_pixels(1, 0)[0]), "height": SIZE, "width": SIZE}]
    with pytest.raises(ValueError, match="have no 'context_image'"):
        CONTRACT.row_inputs(rows)


def test_serving_refuses_a_multiscale_model_at_load_time(tmp_path, irs):
    import shutil

    from patchray.registry.card import ModelCard, PrecisionRecord, sha256_file
    from patchray.serving.model_source import ModelSource

    for suffix in (".xml", ".bin"):
        shutil.copy(irs[0].with_suffix(suffix), tmp_path / f"model{suffix}")
    card = ModelCard(
        name="ms-synthetic", version=1, architecture="multiscale_tiny", dataset="synthetic",
        created="2026-12-03T00:00:00+00:00", input=CONTRACT, threshold_rule={"rule": "fixed"},
        precisions={"f32": PrecisionRecord(file="model.xml", inference_hint="f32", passed=True,
                                           threshold=0.5)},
        serving_precision="f32", patchray_version="0.1.0",
        files={n: sha256_file(tmp_path / n) for n in ("model.xml", "model.bin")})
    (tmp_path / "card.json").write_text(card.model_dump_json())
    with pytest.raises(ArtifactError, match="multi-scale model .* cannot be served"):
        ModelSource(str(tmp_path)).load()
    # ... but the predictor (what slide predict uses) loads it from the card
    predictor = PatchPredictor.from_card(tmp_path)
    assert predictor.multiscale and predictor.threshold == 0.5


def test_int8_calibration_must_feed_both_views(irs):
    import openvino as ov

    from patchray.export.quantize import check_calibration

    model = ov.Core().read_model(irs[0])
    x = np.zeros((2, SIZE, SIZE, 3), np.float32)
    with pytest.raises(ValueError, match="multi-scale.*needs every view"):
        check_calibration(model, x, irs[0])
    check_calibration(model, {"patch": x, "context": x}, irs[0])
    with pytest.raises(ValueError, match="single-input model"):
        check_calibration(ov.Core().read_model(irs[1]), {"patch": x}, irs[1])
