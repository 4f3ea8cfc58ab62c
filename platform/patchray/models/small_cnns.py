"""Small from-scratch CNNs for 50x50 IDC patches (and a tiny model for tests).

``cnn2`` and ``cnn6`` follow the CNN-2L / CNN-6L baselines of Bonnet (2024). TensorFlow is
imported inside the builders only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from patchray.models.keras_compat import load_keras
from patchray.models.registry import (
    check_rate,
    check_width,
    patch_inputs,
    register_model,
    tumour_output,
    widen,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tf_keras

# Smallest input each network can take without a pooling layer reaching size 0 (2x2 "valid"
# max pooling needs >= 2 pixels per pool). Smaller patches are upsampled to this inside the model.
CNN2_MIN_INPUT = 4  # two 2x2 pools
CNN6_MIN_INPUT = 8  # three 2x2 pools


@register_model(
    "tiny",
    family="test",
    description="Test model: Conv3x3(4) + GAP + Dense(1); ~120 params, builds in milliseconds",
)
def build_tiny(
    *, name: str, input_size: int, width: float = 1.0, dropout: float = 0.0
) -> "tf_keras.Model":
    """Test model: one 3x3 conv with 4 filters (times ``width``), global average pooling,
    optional dropout, sigmoid unit."""
    width, dropout = check_width(name, width), check_rate(name, "dropout", dropout)
    keras = load_keras()
    layers = keras.layers
    inputs, x = patch_inputs(input_size)
    x = layers.Conv2D(widen(4, width), 3, padding="same", activation="relu", name="conv")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="dropout")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


@register_model(
    "cnn2",
    family="small_cnn",
    min_input_size=CNN2_MIN_INPUT,
    description="CNN-2L (Bonnet 2024): 2x [Conv5x5 + MaxPool] (32, 64), Dense 256",
)
def build_cnn2(
    *, name: str, input_size: int, width: float = 1.0, dropout: float = 0.0
) -> "tf_keras.Model":
    """CNN-2L: Conv5x5(32)-MaxPool-Conv5x5(64)-MaxPool-Flatten-Dense(256)-Dense(1, sigmoid).

    ``width`` multiplies every layer's filters/units; ``dropout`` follows the dense layer."""
    width, dropout = check_width(name, width), check_rate(name, "dropout", dropout)
    keras = load_keras()
    layers = keras.layers
    inputs, x = patch_inputs(input_size, CNN2_MIN_INPUT)
    for i, filters in enumerate((32, 64), start=1):
        x = layers.Conv2D(widen(filters, width), 5, padding="same", activation="relu",
                          name=f"conv{i}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{i}")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(widen(256, width), activation="relu", name="fc")(x)
    if dropout > 0:
        x = layers.Dropout(dropout, name="fc_dropout")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


@register_model(
    "cnn6",
    family="small_cnn",
    min_input_size=CNN6_MIN_INPUT,
    description="CNN-6L (Bonnet 2024): 3x [2x (Conv3x3-BN-ReLU) + MaxPool + Dropout], Dense 256",
)
def build_cnn6(
    *,
    name: str,
    input_size: int,
    dropout: float = 0.3,
    dense_dropout: float = 0.5,
    bn_momentum: float = 0.9,
    width: float = 1.0,
) -> "tf_keras.Model":
    """CNN-6L: six Conv3x3-BN-ReLU (32,32,64,64,128,128), pool+dropout per pair, Dense 256.

    ``dropout`` follows each 2x2 max pool; ``dense_dropout`` follows the Dense-256-BN-ReLU block;
    ``width`` multiplies every layer's filters/units.
    Convolutions and the dense layer have no bias: the BatchNorm right after them has its own
    offset (beta), so a bias would be redundant. ``bn_momentum`` is 0.9 rather than Keras'
    0.99: with short schedules (a few hundred steps) 0.99 leaves the inference statistics
    near their initial values, and validation then scores a different network than training.
    """
    dropout = check_rate(name, "dropout", dropout)
    dense_dropout = check_rate(name, "dense_dropout", dense_dropout)
    bn_momentum = check_rate(name, "bn_momentum", bn_momentum)
    width = check_width(name, width)
    keras = load_keras()
    layers = keras.layers
    inputs, x = patch_inputs(input_size, CNN6_MIN_INPUT)
    x = cnn6_features(x, dropout=dropout, bn_momentum=bn_momentum, width=width)
    x = layers.Dense(widen(256, width), use_bias=False, name="fc")(x)
    x = layers.BatchNormalization(momentum=bn_momentum, name="fc_bn")(x)
    x = layers.ReLU(name="fc_relu")(x)
    x = layers.Dropout(dense_dropout, name="fc_dropout")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


def cnn6_features(x: Any, *, dropout: float, bn_momentum: float, width: float) -> Any:
    """CNN-6L's convolutional part on ``x``, flattened: the three [2x (Conv3x3-BN-ReLU) +
    MaxPool + Dropout] blocks (32, 64, 128 filters times ``width``). Shared by ``cnn6`` and
    the towers of ``multiscale_cnn6``; the layer names are cnn6's (checkpoints rely on them)."""
    layers = load_keras().layers
    conv = 0
    for block, filters in enumerate((32, 64, 128), start=1):
        for _ in range(2):
            conv += 1
            x = layers.Conv2D(widen(filters, width), 3, padding="same", use_bias=False,
                              name=f"conv{conv}")(x)
            x = layers.BatchNormalization(momentum=bn_momentum, name=f"bn{conv}")(x)
            x = layers.ReLU(name=f"relu{conv}")(x)
        x = layers.MaxPooling2D(2, name=f"pool{block}")(x)
        x = layers.Dropout(dropout, name=f"dropout{block}")(x)
    return layers.Flatten(name="flatten")(x)
