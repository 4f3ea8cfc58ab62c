"""Two-tower multi-scale models: the patch and its context (the same centre at a coarser
scale, :mod:`patchray.slides.multiscale`), each through a backbone, features concatenated
before the classifier.

Inputs ``patch`` and ``context``, both ``float32 (batch, input_size, input_size, 3)`` scaled
to [0, 1] like every registry model; output ``tumour_probability`` (see
:mod:`patchray.models.registry`). ``shared=True`` runs one backbone (one set of weights) on
both views; ``shared=False`` (default) gives each view its own, since the context at 4x
less resolution shows other structures (glands, not nuclei). TensorFlow is imported inside
the builders only. The contract's ``context_scale`` (how much larger the context's field of
view is) comes from the dataset, not from the model: the model only sees two patches.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from patchray.errors import ConfigError
from patchray.models.keras_compat import load_keras
from patchray.models.registry import (
    INPUT_NAME,
    check_rate,
    check_width,
    patch_inputs,
    register_model,
    tumour_output,
    widen,
)
from patchray.models.small_cnns import CNN6_MIN_INPUT, cnn6_features

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tf_keras

CONTEXT_INPUT_NAME = "context"
#: The input names of a two-tower model, in the order OpenVINO and the predictor feed them.
MULTISCALE_INPUTS = (INPUT_NAME, CONTEXT_INPUT_NAME)


def _check_shared(name: str, shared: Any) -> bool:
    if not isinstance(shared, bool):
        raise ConfigError(f"shared for model {name!r} must be true or false, got {shared!r}")
    return shared


def two_towers(name: str, input_size: int, min_input_size: int, shared: bool,
               features: Callable[[Any], Any]) -> tuple[list[Any], Any]:
    """``([patch, context] Inputs, concatenated features)``: ``features`` (a function of a
    tensor, building the backbone's layers) wrapped as one tower Model per view, or one
    shared by both."""
    keras = load_keras()
    layers = keras.layers

    def tower(tower_name: str) -> Any:
        inputs, x = patch_inputs(input_size, min_input_size)
        return keras.Model(inputs, features(x), name=tower_name)

    patch = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name=INPUT_NAME)
    context = keras.Input(shape=(input_size, input_size, 3), dtype="float32",
                          name=CONTEXT_INPUT_NAME)
    if shared:
        backbone = tower("tower")
        a, b = backbone(patch), backbone(context)
    else:
        a, b = tower("patch_tower")(patch), tower("context_tower")(context)
    return [patch, context], layers.Concatenate(name="views")([a, b])


@register_model(
    "multiscale_cnn6",
    family="small_cnn",
    min_input_size=CNN6_MIN_INPUT,
    inputs=MULTISCALE_INPUTS,
    description="Two-tower CNN-6L over patch + context (same centre, coarser scale), "
                "features concatenated, Dense 256",
)
def build_multiscale_cnn6(
    *,
    name: str,
    input_size: int,
    shared: bool = False,
    dropout: float = 0.3,
    dense_dropout: float = 0.5,
    bn_momentum: float = 0.9,
    width: float = 1.0,
) -> "tf_keras.Model":
    """CNN-6L's convolutional blocks as a tower per view (``shared``: one tower for both),
    flattened and concatenated, then Dense 256-BN-ReLU-Dropout and the sigmoid unit; the
    other hyperparameters are cnn6's."""
    shared = _check_shared(name, shared)
    dropout = check_rate(name, "dropout", dropout)
    dense_dropout = check_rate(name, "dense_dropout", dense_dropout)
    bn_momentum = check_rate(name, "bn_momentum", bn_momentum)
    width = check_width(name, width)
    keras = load_keras()
    layers = keras.layers
    inputs, x = two_towers(name, input_size, CNN6_MIN_INPUT, shared, lambda t: cnn6_features(
        t, dropout=dropout, bn_momentum=bn_momentum, width=width))
    x = layers.Dense(widen(256, width), use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.Dropout(dense_dropout, name="fc_dropout")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


@register_model(
    "multiscale_tiny",
    family="test",
    inputs=MULTISCALE_INPUTS,
    description="Test model: two towers of Conv3x3(4) + GAP, concatenated, Dense(1)",
)
def build_multiscale_tiny(
    *, name: str, input_size: int, shared: bool = False, width: float = 1.0
) -> "tf_keras.Model":
    """Test model: a 3x3 conv with 4 filters (times ``width``) and global average pooling
    per view (``shared``: one for both), concatenated, sigmoid unit."""
    shared = _check_shared(name, shared)
    width = check_width(name, width)
    keras = load_keras()
    layers = keras.layers

    def features(x: Any) -> Any:
        x = layers.Conv2D(widen(4, width), 3, padding="same", activation="relu", name="conv")(x)
        return layers.GlobalAveragePooling2D(name="gap")(x)

    inputs, x = two_towers(name, input_size, 1, shared, features)
    return keras.Model(inputs, tumour_output(x), name=name)
