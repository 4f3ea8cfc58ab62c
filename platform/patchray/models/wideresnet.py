"""Wide residual networks (Zagoruyko & Komodakis, 2016), WRN-depth-k, for small patches.

Pre-activation basic blocks (BN-ReLU-Conv3x3, twice) in three groups of 16k, 32k and 64k
filters with strides 1, 2, 2; a 1x1 convolution on the shortcut whenever a block changes the
number of channels or the resolution; BN-ReLU-GlobalAveragePooling-Dense(1, sigmoid) at the
end. TensorFlow is imported inside the builders only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from patchray.errors import ConfigError
from patchray.models.keras_compat import load_keras
from patchray.models.registry import (
    check_int,
    check_rate,
    patch_inputs,
    register_model,
    tumour_output,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tf_keras

_DESCRIPTION = "Wide ResNet WRN-{depth}-{width} (pre-activation basic blocks, 3 groups)"


def _check_depth(name: str, depth: Any) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 10 or (depth - 4) % 6:
        raise ConfigError(
            f"depth for model {name!r} must be an int with (depth - 4) % 6 == 0 and depth >= 10 "
            f"(e.g. 10, 16, 22, 28), got {depth!r}"
        )
    return depth


def _wide_resnet(
    *, name: str, input_size: int, depth: int, width: int, dropout: float
) -> "tf_keras.Model":
    depth = _check_depth(name, depth)
    width = check_int(name, "width", width, 1)
    dropout = check_rate(name, "dropout", dropout)
    keras = load_keras()
    layers = keras.layers
    blocks_per_group = (depth - 4) // 6

    def conv(filters: int, kernel: int, stride: int, label: str) -> Any:
        return layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False,
            kernel_initializer="he_normal", name=label,
        )

    inputs, x = patch_inputs(input_size)
    x = conv(16, 3, 1, "stem_conv")(x)
    channels = 16
    for group, (filters, group_stride) in enumerate(
        ((16 * width, 1), (32 * width, 2), (64 * width, 2)), start=1
    ):
        for block in range(1, blocks_per_group + 1):
            p = f"g{group}b{block}_"
            stride = group_stride if block == 1 else 1
            pre = layers.BatchNormalization(name=p + "bn1")(x)
            pre = layers.ReLU(name=p + "relu1")(pre)
            if channels != filters or stride != 1:
                # Shape changes: project the *pre-activated* input, as in the reference code.
                shortcut = conv(filters, 1, stride, p + "shortcut")(pre)
            else:
                shortcut = x
            y = conv(filters, 3, stride, p + "conv1")(pre)
            y = layers.BatchNormalization(name=p + "bn2")(y)
            y = layers.ReLU(name=p + "relu2")(y)
            if dropout > 0:
                y = layers.Dropout(dropout, name=p + "dropout")(y)
            y = conv(filters, 3, 1, p + "conv2")(y)
            x = layers.Add(name=p + "add")([shortcut, y])
            channels = filters
    x = layers.BatchNormalization(name="final_bn")(x)
    x = layers.ReLU(name="final_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


@register_model(
    "wideresnet",
    family="wideresnet",
    description="Wide ResNet WRN-depth-k; depth (16) with (depth-4)%6==0, width k (4), dropout",
)
def build_wideresnet(
    *, name: str, input_size: int, depth: int = 16, width: int = 4, dropout: float = 0.0
) -> "tf_keras.Model":
    """Wide ResNet WRN-``depth``-``width`` with optional dropout between the block convs."""
    return _wide_resnet(
        name=name, input_size=input_size, depth=depth, width=width, dropout=dropout
    )


# Aliases fix depth and width (the name says which network it is); only dropout is tunable.
@register_model("wrn16_4", family="wideresnet", description=_DESCRIPTION.format(depth=16, width=4))
def build_wrn16_4(*, name: str, input_size: int, dropout: float = 0.0) -> "tf_keras.Model":
    """Wide ResNet WRN-16-4 (alias of ``wideresnet`` with depth=16, width=4)."""
    return _wide_resnet(name=name, input_size=input_size, depth=16, width=4, dropout=dropout)


@register_model(
    "wrn28_10", family="wideresnet", description=_DESCRIPTION.format(depth=28, width=10)
)
def build_wrn28_10(*, name: str, input_size: int, dropout: float = 0.0) -> "tf_keras.Model":
    """Wide ResNet WRN-28-10 (alias of ``wideresnet`` with depth=28, width=10)."""
    return _wide_resnet(name=name, input_size=input_size, depth=28, width=10, dropout=dropout)
