"""The large Keras applications build, predict, preprocess like their own preprocess_input
and survive a save/load round trip (real TensorFlow; seconds to a minute each)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.unit.models.test_registry import APPLICATIONS, _batch, _keras

from patchray.models import create_model, get_model_info

pytestmark = pytest.mark.integration

def _reference_preprocess(name: str, x: np.ndarray, side: int) -> np.ndarray:
    """What tf_keras.applications expects, from the official preprocess_input functions."""
    from patchray.models.keras_compat import load_tensorflow

    keras, tf = _keras(), load_tensorflow()
    apps = keras.applications
    if x.shape[1] != side:
        x = tf.image.resize(x, (side, side), method="bilinear").numpy()
    x255 = x * 255.0
    fn = {
        "densenet121": apps.densenet.preprocess_input,
        "efficientnetv2_b0": apps.efficientnet_v2.preprocess_input,  # identity (0..255)
        "inception_v3": apps.inception_v3.preprocess_input,
        "mobilenet_v2": apps.mobilenet_v2.preprocess_input,
        "resnet50": apps.resnet50.preprocess_input,
        "vgg19": apps.vgg19.preprocess_input,
    }[name]
    return np.asarray(fn(x255.copy()))


@pytest.mark.parametrize("name", APPLICATIONS)
def test_application_builds_and_predicts(name: str, tmp_path: Path) -> None:
    from patchray.models.applications import get_base_model

    keras = _keras()
    size = 50 if name == "inception_v3" else 32
    model = create_model(name, input_size=size)
    assert model.name == name and model.output_shape == (None, 1)
    x = _batch(size)
    y = model.predict(x, verbose=0)
    assert y.shape == (2, 1) and y.dtype == np.float32 and ((y >= 0) & (y <= 1)).all()

    # The in-model preprocessing equals the application's own preprocess_input.
    base = get_base_model(model)
    side = max(size, get_model_info(name).min_input_size)
    before_base = keras.Model(model.input, model.layers[model.layers.index(base) - 1].output)
    np.testing.assert_allclose(
        before_base(x).numpy(), _reference_preprocess(name, x, side), atol=1e-4
    )
    assert not any(type(layer).__name__ == "Lambda" for layer in model.layers)

    model.save(tmp_path / f"{name}.keras")
    reloaded = keras.models.load_model(tmp_path / f"{name}.keras")
    np.testing.assert_allclose(reloaded(x, training=False).numpy(), y, rtol=1e-5, atol=1e-6)
