"""Two-tower multi-scale models (patchray.models.multiscale): two named inputs, one
output, shared or separate towers."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.errors import ConfigError
from patchray.inference.preprocess import CONTEXT_INPUT, PATCH_INPUT
from patchray.models import create_model, get_model_info, list_models
from patchray.models.multiscale import MULTISCALE_INPUTS


def _views(size: int, n: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {name: rng.random((n, size, size, 3), dtype=np.float32) for name in MULTISCALE_INPUTS}


def test_multiscale_models_are_registered_with_two_inputs():
    assert list_models("multiscale_*") == ["multiscale_cnn6", "multiscale_tiny"]
    for name in list_models("multiscale_*"):
        info = get_model_info(name)
        assert info.multiscale and info.inputs == (PATCH_INPUT, CONTEXT_INPUT)
        assert info.hyperparameters()["shared"] is False
    assert not get_model_info("cnn6").multiscale and get_model_info("cnn6").inputs == ("patch",)


def test_multiscale_cnn6_takes_patch_and_context_and_gives_one_probability():
    model = create_model("multiscale_cnn6", input_size=32, width=0.25)
    assert model.input_names == ["patch", "context"]
    assert [tuple(i.shape) for i in model.inputs] == [(None, 32, 32, 3)] * 2
    assert model.output_shape == (None, 1) and model.layers[-1].name == "tumour_probability"
    assert {layer.name for layer in model.layers} >= {"patch_tower", "context_tower", "views"}
    views = _views(32)
    y = model(views, training=False).numpy()
    assert y.shape == (3, 1) and ((y >= 0) & (y <= 1)).all()
    # each tower is CNN-6L's convolutional part
    tower = model.get_layer("patch_tower")
    assert [layer.filters for layer in tower.layers if hasattr(layer, "filters")] == \
        [8, 8, 16, 16, 32, 32]
    # the context matters: another context, another answer
    other = {**views, "context": views["context"][::-1]}
    assert not np.allclose(model(other, training=False).numpy(), y)


def test_shared_towers_share_weights():
    separate = create_model("multiscale_cnn6", input_size=16, width=0.25)
    shared = create_model("multiscale_cnn6", input_size=16, width=0.25, shared=True)
    tower = shared.get_layer("tower")
    assert "patch_tower" not in {layer.name for layer in shared.layers}
    assert separate.count_params() - shared.count_params() == tower.count_params()
    tiny = create_model("multiscale_tiny", input_size=8, shared=True)
    assert tiny.count_params() == (3 * 3 * 3 * 4 + 4) + 8 + 1
    with pytest.raises(ConfigError, match="shared for model 'multiscale_tiny' must be true or"):
        create_model("multiscale_tiny", shared="yes")
    with pytest.raises(ConfigError, match="'dropuot'"):
        create_model("multiscale_cnn6", dropuot=0.1)


def test_small_inputs_are_upsampled_in_each_tower():
    model = create_model("multiscale_cnn6", input_size=4, width=0.25)
    assert model.get_layer("patch_tower").get_layer("upsample").output_shape == (None, 8, 8, 3)
    assert model(_views(4, 2), training=False).shape == (2, 1)
