"""ImageNet architectures from ``tf_keras.applications`` as patch classifiers.

Every model is ``patch [0,1] -> (Resizing up to the network's minimum input) -> the family's
own input preprocessing -> application base (include_top=False, pooling="avg") -> Dropout ->
Dense(1, sigmoid)``. Preprocessing uses only standard layers (Rescaling, Normalization with
fixed mean/variance, a frozen 1x1 Conv2D for RGB->BGR): no Lambda or custom layers, so the
models save as ``.keras``, reload with plain ``tf_keras.models.load_model`` and convert with
``tf.saved_model.save`` / OpenVINO.

Nothing is ever downloaded: the base is always constructed with ``weights=None``. Pretrained
weights come from a Keras HDF5 weights file the user provides (for example the official
``*_notop.h5`` files), loaded by layer name into the base. TensorFlow is imported inside the
builders only.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal

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

log = logging.getLogger(__name__)

Mode = Literal["full", "frozen", "finetune"]
MODES: tuple[str, ...] = ("full", "frozen", "finetune")

# Per-family input preprocessing, applied to the [0, 1] patch inside the model:
#   "tf"             x * 2 - 1                                  (Inception, MobileNet)
#   "caffe"          RGB->BGR, x * 255 - ImageNet BGR mean       (VGG, ResNet50 v1)
#   "torch"          (x - ImageNet mean) / ImageNet std          (DenseNet)
#   "efficientnetv2" x * 255; the base's include_preprocessing does the rest
Preprocessing = Literal["tf", "caffe", "torch", "efficientnetv2"]
CAFFE_BGR_MEAN = [103.939, 116.779, 123.68]
TORCH_MEAN = [0.485, 0.456, 0.406]
TORCH_STD = [0.229, 0.224, 0.225]


@dataclass(frozen=True)
class ApplicationSpec:
    key: str  # registry name
    constructor: str  # attribute of tf_keras.applications
    min_input_size: int
    preprocessing: Preprocessing
    description: str


APPLICATIONS: tuple[ApplicationSpec, ...] = (
    ApplicationSpec("inception_v3", "InceptionV3", 75, "tf", "InceptionV3 (Szegedy 2016)"),
    ApplicationSpec("vgg19", "VGG19", 32, "caffe", "VGG19 (Simonyan & Zisserman 2015)"),
    ApplicationSpec("resnet50", "ResNet50", 32, "caffe", "ResNet50 v1 (He 2016)"),
    ApplicationSpec("mobilenet_v2", "MobileNetV2", 32, "tf", "MobileNetV2 alpha=1.0 (2018)"),
    ApplicationSpec("densenet121", "DenseNet121", 32, "torch", "DenseNet121 (Huang 2017)"),
    ApplicationSpec(
        "efficientnetv2_b0", "EfficientNetV2B0", 32, "efficientnetv2", "EfficientNetV2-B0 (2021)"
    ),
)


def get_base_model(model: "tf_keras.Model") -> "tf_keras.Model":
    """The nested ``tf_keras.applications`` base of a model built by this module."""
    keras = load_keras()
    bases = [layer for layer in model.layers if isinstance(layer, keras.Model)]
    if len(bases) != 1:
        raise ValueError(f"model {model.name!r} has {len(bases)} nested base models, expected 1")
    return bases[0]


def _preprocess(x: Any, kind: Preprocessing) -> Any:
    """Map the [0, 1] RGB patch to what the application expects (standard float32 layers)."""
    layers = load_keras().layers
    if kind == "tf":
        return layers.Rescaling(2.0, offset=-1.0, dtype="float32", name="scale_to_pm1")(x)
    if kind == "torch":
        return layers.Normalization(
            mean=TORCH_MEAN, variance=[s * s for s in TORCH_STD], dtype="float32",
            name="imagenet_normalize",
        )(x)
    if kind == "efficientnetv2":
        return layers.Rescaling(255.0, dtype="float32", name="scale_to_255")(x)
    if kind == "caffe":
        # RGB->BGR as a fixed channel permutation (1x1 conv, kernel[0,0,i,o] = 1 iff i == 2-o):
        # a standard layer, unlike tf.reverse in a Lambda, so export stays trivial. Exact in
        # float32 (one nonzero term per output channel).
        permutation = [[[[1.0 if i == 2 - o else 0.0 for o in range(3)] for i in range(3)]]]
        x = layers.Conv2D(
            3, 1, use_bias=False, trainable=False, dtype="float32",
            kernel_initializer=load_keras().initializers.Constant(permutation),
            name="rgb_to_bgr",
        )(x)
        x = layers.Rescaling(255.0, dtype="float32", name="scale_to_255")(x)
        return layers.Normalization(
            mean=CAFFE_BGR_MEAN, variance=[1.0, 1.0, 1.0], dtype="float32",
            name="subtract_bgr_mean",
        )(x)
    raise AssertionError(f"unknown preprocessing {kind!r}")  # pragma: no cover


def _weights_path(name: str, weights: Any) -> Path | None:
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)) or not str(weights):
        raise ConfigError(
            f"weights for model {name!r} must be None or a path to a .h5 weights file, "
            f"got {weights!r}"
        )
    path = Path(weights).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"weights file for model {name!r} not found: {path} (weights must be a local Keras "
            "HDF5 weights file of the include_top=False base; nothing is downloaded)"
        )
    import h5py

    if not h5py.is_hdf5(path):
        raise ConfigError(f"weights file for model {name!r} is not an HDF5 (.h5) file: {path}")
    return path


def _h5_layers_with_weights(path: Path) -> set[str]:
    """Names of the layers that have at least one weight in a Keras HDF5 weights file."""
    import h5py

    def names(group: Any, attr: str) -> list[str]:
        # Keras splits long name lists over attr0, attr1, ... (HDF5 header size limit).
        if attr in group.attrs:
            raw = list(group.attrs[attr])
        else:
            raw, chunk = [], 0
            while f"{attr}{chunk}" in group.attrs:
                raw.extend(group.attrs[f"{attr}{chunk}"])
                chunk += 1
        return [n.decode("utf8") if hasattr(n, "decode") else str(n) for n in raw]

    with h5py.File(path, "r") as f:
        group = f
        if "layer_names" not in f.attrs and "model_weights" in f:  # full-model .h5 file
            group = f["model_weights"]
        return {
            n for n in names(group, "layer_names")
            if n in group and names(group[n], "weight_names")
        }


def _load_base_weights(name: str, base: "tf_keras.Model", path: Path) -> None:
    # load_weights(by_name=True) silently skips layers it cannot find, so a file for another
    # architecture (or of the whole classifier instead of its base) would "load" nothing.
    in_file = _h5_layers_with_weights(path)
    missing = [layer.name for layer in base.layers if layer.weights and layer.name not in in_file]
    if missing:
        raise ConfigError(
            f"weights file {path} has no weights for {len(missing)} layer(s) of the {base.name} "
            f"base of model {name!r} (e.g. {', '.join(missing[:5])}); it must hold the weights "
            "of the include_top=False application, saved by layer name"
        )
    try:
        base.load_weights(str(path), by_name=True, skip_mismatch=False)
    except ValueError as exc:  # shape / weight-count mismatch
        raise ConfigError(f"cannot load weights file {path} into model {name!r}: {exc}") from exc


def _set_trainable(base: "tf_keras.Model", mode: str, finetune_layers: int) -> None:
    keras = load_keras()
    if mode == "full":
        base.trainable = True
        return
    if mode == "frozen":
        base.trainable = False
        return
    # finetune: only the top `finetune_layers` layers of the base train, and never its
    # BatchNormalization layers. Their moving mean/variance hold the statistics of the
    # pretraining data; re-estimating them from small batches of a very different domain
    # (H&E patches) shifts every activation the frozen layers below were tuned for and wrecks
    # the pretrained features in the first steps. In tf_keras a BN layer with trainable=False
    # also runs in inference mode, and the base is additionally called with training=False.
    base.trainable = True
    cutoff = len(base.layers) - finetune_layers
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= cutoff and not isinstance(
            layer, keras.layers.BatchNormalization
        )


def _build_application(
    spec: ApplicationSpec,
    *,
    name: str,
    input_size: int,
    weights: str | os.PathLike[str] | None,
    mode: Mode,
    finetune_layers: int,
    dropout: float,
) -> "tf_keras.Model":
    if mode not in MODES:
        raise ConfigError(
            f"mode for model {name!r} must be one of {', '.join(MODES)}, got {mode!r}"
        )
    finetune_layers = check_int(name, "finetune_layers", finetune_layers, 0)
    dropout = check_rate(name, "dropout", dropout)
    path = _weights_path(name, weights)
    if path is None and mode != "full":
        log.warning(
            "model %r: mode=%r with weights=None trains on top of a randomly initialised base",
            name, mode,
        )
    keras = load_keras()
    side = max(input_size, spec.min_input_size)
    inputs, x = patch_inputs(input_size, spec.min_input_size)
    x = _preprocess(x, spec.preprocessing)
    extra = {"include_preprocessing": True} if spec.preprocessing == "efficientnetv2" else {}
    base = getattr(keras.applications, spec.constructor)(
        include_top=False, weights=None, input_shape=(side, side, 3), pooling="avg", **extra
    )
    if path is not None:
        _load_base_weights(name, base, path)
    _set_trainable(base, mode, finetune_layers)
    # Frozen / finetune: run the base in inference mode (BN statistics and any dropout inside
    # it, e.g. EfficientNet's stochastic depth, stay fixed). Full training: normal behaviour.
    x = base(x, training=False) if mode != "full" else base(x)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    return keras.Model(inputs, tumour_output(x), name=name)


def _make_builder(spec: ApplicationSpec) -> Callable[..., "tf_keras.Model"]:
    def build(
        *,
        name: str,
        input_size: int,
        weights: str | os.PathLike[str] | None = None,
        mode: Mode = "full",
        finetune_layers: int = 20,
        dropout: float = 0.2,
    ) -> "tf_keras.Model":
        return _build_application(
            spec, name=name, input_size=input_size, weights=weights, mode=mode,
            finetune_layers=finetune_layers, dropout=dropout,
        )

    build.__name__ = f"build_{spec.key}"
    build.__qualname__ = build.__name__
    build.__doc__ = (
        f"{spec.description} base (tf_keras.applications.{spec.constructor}, include_top=False, "
        f"avg pooling) + Dropout + Dense(1, sigmoid); inputs < {spec.min_input_size} px are "
        "upsampled. weights: optional local .h5 file of the base; mode: full | frozen | "
        "finetune (top finetune_layers base layers train, BatchNorm stays frozen)."
    )
    return build


for _spec in APPLICATIONS:
    globals()[f"build_{_spec.key}"] = register_model(
        _spec.key,
        family="application",
        default_input_size=50,
        min_input_size=_spec.min_input_size,
        description=f"{_spec.description}, ImageNet architecture (weights from a local .h5 file)",
    )(_make_builder(_spec))
del _spec
