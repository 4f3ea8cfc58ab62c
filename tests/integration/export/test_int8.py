"""INT8 with NNCF on a model that learned something: within the AUC gate of f32, with and
without accuracy control, and f32 still equal to Keras (the parity check, kept)."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.evaluation.metrics import roc_auc
from patchray.inference.preprocess import Preprocess

pytestmark = pytest.mark.integration
SIZE = 32
GATE = 0.005


def patches(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Tumour-like (dark purple) and benign-like (pale pink) patches that overlap a little."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    mix = np.clip(y[:, None] * 0.6 + rng.normal(0.2, 0.25, n)[:, None], 0, 1)
    colour = (1 - mix) * np.array([225, 185, 215]) + mix * np.array([140, 70, 160])
    x = colour[:, None, None, :] + rng.normal(0, 18, (n, SIZE, SIZE, 3))
    return np.clip(x, 0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def trained_ir(tmp_path_factory):
    from patchray.export.openvino_export import convert_keras
    from patchray.models import create_model

    pre = Preprocess(size=SIZE)
    x, y = patches(768, seed=0)
    model = create_model("cnn2", input_size=SIZE)
    model.compile(optimizer="adam", loss="binary_crossentropy")
    model.fit(pre.to_input(x), y, epochs=4, batch_size=32, verbose=0)
    out = tmp_path_factory.mktemp("int8")
    xml = convert_keras(model, SIZE, out / "model.xml")
    x_val, y_val = patches(512, seed=1)
    keras_val = np.asarray(model(pre.to_input(x_val), training=False)).reshape(-1)
    return xml, pre.to_input(x[:256]), pre.to_input(x_val), y_val, keras_val


def _probs(xml, x, hint="f32") -> np.ndarray:
    import openvino as ov

    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": hint})
    return np.asarray(compiled(x)[0]).reshape(-1)


def test_f32_ir_equals_keras(trained_ir):
    xml, _, x_val, _, keras_val = trained_ir
    assert np.max(np.abs(_probs(xml, x_val) - keras_val)) <= 1e-4


@pytest.mark.parametrize("accuracy_control", [False, True], ids=["ptq", "accuracy-control"])
def test_int8_stays_inside_the_auc_gate(trained_ir, tmp_path, accuracy_control):
    import openvino as ov

    from patchray.export.quantize import quantize_int8

    xml, calibration, x_val, y_val, _ = trained_ir
    f32_auc = roc_auc(y_val, _probs(xml, x_val))
    assert f32_auc > 0.85  # the model learned the task; a gate on chance would say nothing
    int8_xml = quantize_int8(xml, calibration, tmp_path / "model-int8.xml",
                             validation=(x_val, y_val) if accuracy_control else None,
                             max_auc_drop=GATE)
    ops = {op.get_type_name() for op in ov.Core().read_model(int8_xml).get_ops()}
    assert "FakeQuantize" in ops  # really quantised, not a copy
    p8 = _probs(int8_xml, x_val)
    assert f32_auc - roc_auc(y_val, p8) <= GATE
    assert np.max(np.abs(p8 - _probs(xml, x_val))) < 0.1  # same model, coarser arithmetic
