"""A timm-style registry of patch classifiers built with legacy Keras 2 (``tf_keras``).

Builder modules register functions with :func:`register_model`; callers only use
:func:`create_model` and the listing helpers. Nothing here imports TensorFlow at import time:
``tf_keras`` is loaded (through :func:`patchray.models.keras_compat.load_keras`) only when a
model is actually built.

Input contract of every model built by :func:`create_model`
------------------------------------------------------------
* input ``patch``: ``float32`` tensor of shape ``(batch, input_size, input_size, 3)``, RGB,
  **already scaled to [0, 1]** (the data pipeline divides uint8 pixels by 255). Any further
  preprocessing a network needs (upsampling to its minimum input size, ImageNet mean/std,
  [-1, 1] scaling, RGB->BGR, ...) happens inside the model with standard layers, so a
  SavedModel / OpenVINO IR has the same contract.
* output ``tumour_probability``: ``float32`` tensor of shape ``(batch, 1)``, the sigmoid
  probability that the patch shows tumour (IDC positive). The output layer is ``float32`` even
  under a ``mixed_float16`` policy.
* ``model.name`` is the registry name.
* Multi-scale models (:mod:`patchray.models.multiscale`, registered with
  ``inputs=("patch", "context")``) take a second input ``context`` of the same shape: the
  same centre at a coarser scale. :attr:`ModelInfo.inputs` says which, without TensorFlow.

Builder contract
----------------
A builder is called as ``builder(name=..., input_size=..., **hyperparameters)`` and returns a
``tf_keras.Model``. ``name`` and ``input_size`` are supplied by :func:`create_model`; every other
keyword-only parameter of the builder is a hyperparameter users may override, and anything else
is rejected with :class:`~patchray.errors.ConfigError`. Builders start with :func:`patch_inputs`
and end with :func:`tumour_output` so every model honours the contract above.
"""

from __future__ import annotations

import difflib
import fnmatch
import gc
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from patchray.errors import ConfigError, UnknownModelError
from patchray.models.keras_compat import load_keras

if TYPE_CHECKING:  # pragma: no cover - typing only
    import tf_keras

__all__ = [
    "INPUT_NAME",
    "check_int",
    "check_width",
    "widen",
    "check_rate",
    "OUTPUT_NAME",
    "RESERVED_BUILDER_ARGS",
    "ModelInfo",
    "create_model",
    "describe_models",
    "get_model_info",
    "list_models",
    "patch_inputs",
    "register_model",
    "tumour_output",
]

INPUT_NAME = "patch"
OUTPUT_NAME = "tumour_probability"
#: Keyword arguments :func:`create_model` passes to every builder itself.
RESERVED_BUILDER_ARGS = ("name", "input_size")
FAMILIES = ("small_cnn", "wideresnet", "application", "test")


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows about one model name."""

    name: str
    builder: Callable[..., "tf_keras.Model"]
    default_input_size: int  # patch side in pixels the model is designed for (50 for IDC)
    min_input_size: int  # smaller inputs are upsampled inside the model (Resizing) to this
    description: str
    family: str  # "small_cnn" | "wideresnet" | "application" | "test"
    inputs: tuple[str, ...] = (INPUT_NAME,)  # ("patch", "context") for multi-scale models
    # Trains on the train split plus the unlabelled one (label -1, weight 0 in its batches):
    # the SGAN models of patchray.models.sgan.
    semi_supervised: bool = False

    @property
    def multiscale(self) -> bool:
        return len(self.inputs) > 1

    def hyperparameters(self) -> dict[str, Any]:
        """The overridable keyword arguments of the builder and their defaults."""
        return {
            p.name: p.default
            for p in inspect.signature(self.builder).parameters.values()
            if p.name not in RESERVED_BUILDER_ARGS
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


_REGISTRY: dict[str, ModelInfo] = {}


def register_model(
    name: str,
    *,
    default_input_size: int = 50,
    min_input_size: int = 1,
    description: str = "",
    family: str = "",
    inputs: tuple[str, ...] = (INPUT_NAME,),
    semi_supervised: bool = False,
) -> Callable[[Callable[..., "tf_keras.Model"]], Callable[..., "tf_keras.Model"]]:
    """Decorator registering ``builder`` under ``name``; returns the builder unchanged.

    The builder must accept the keyword arguments ``name`` and ``input_size`` (see the module
    docstring). Registering a different builder under a taken name is a programming error.
    """
    if family and family not in FAMILIES:
        raise ValueError(f"model family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if min_input_size < 1 or default_input_size < 1:
        raise ValueError("default_input_size and min_input_size must be >= 1")

    def decorator(builder: Callable[..., "tf_keras.Model"]) -> Callable[..., "tf_keras.Model"]:
        params = inspect.signature(builder).parameters
        missing = [
            a
            for a in RESERVED_BUILDER_ARGS
            if a not in params
            and not any(p.kind is p.VAR_KEYWORD for p in params.values())
        ]
        if missing:
            raise TypeError(
                f"builder {builder.__qualname__} for model {name!r} must accept the keyword "
                f"argument(s) {', '.join(missing)}"
            )
        existing = _REGISTRY.get(name)
        if existing is not None and _qualname(existing.builder) != _qualname(builder):
            raise ValueError(
                f"model {name!r} is already registered by {_qualname(existing.builder)}"
            )
        doc = description or (inspect.getdoc(builder) or "").split("\n", 1)[0]
        _REGISTRY[name] = ModelInfo(
            name=name,
            builder=builder,
            default_input_size=default_input_size,
            min_input_size=min_input_size,
            description=doc,
            family=family,
            inputs=tuple(inputs),
            semi_supervised=semi_supervised,
        )
        return builder

    return decorator


def _qualname(fn: Callable[..., Any]) -> str:
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching the shell-style ``pattern`` (fnmatch), sorted."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatchcase(n, pattern))


def get_model_info(name: str) -> ModelInfo:
    """The :class:`ModelInfo` for ``name``; :class:`UnknownModelError` (with suggestions) if not."""
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        pass
    close = difflib.get_close_matches(str(name), list(_REGISTRY), n=3)
    hint = f"; did you mean: {', '.join(close)}?" if close else ""
    raise UnknownModelError(f"unknown model {name!r}{hint} (patchray models lists all)")


def create_model(name: str, *, input_size: int | None = None, **kwargs: Any) -> "tf_keras.Model":
    """Build the registered model ``name`` for square RGB patches of side ``input_size``.

    ``input_size`` defaults to the model's ``default_input_size``; inputs smaller than its
    ``min_input_size`` are upsampled inside the model. ``kwargs`` are the builder's
    hyperparameters (see :meth:`ModelInfo.hyperparameters`); unknown ones raise
    :class:`ConfigError`. See the module docstring for the input/output contract.
    """
    info = get_model_info(name)
    size = info.default_input_size if input_size is None else input_size
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ConfigError(f"input_size for model {name!r} must be a positive int, got {size!r}")
    accepted = info.hyperparameters()
    takes_any = any(
        p.kind is p.VAR_KEYWORD for p in inspect.signature(info.builder).parameters.values()
    )
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown and not takes_any:
        raise ConfigError(
            f"model {name!r} does not accept {', '.join(map(repr, unknown))}; accepted keyword "
            f"arguments: {', '.join(accepted) or '(none)'}"
        )
    model = info.builder(name=name, input_size=size, **kwargs)
    if model.name != name:  # pragma: no cover - builder bug
        raise RuntimeError(f"builder for {name!r} returned a model named {model.name!r}")
    return model


def describe_models(pattern: str = "*") -> list[dict[str, Any]]:
    """One row per model matching ``pattern`` for ``patchray models``.

    Keys: name, family, default_input_size, min_input_size, params, description. ``params`` is
    counted by building each model (random init) at its default input size, so this imports
    TensorFlow and takes a while for the large application models.
    """
    rows = []
    for name in list_models(pattern):
        info = _REGISTRY[name]
        model = create_model(name)
        params = int(model.count_params())
        del model
        gc.collect()
        rows.append(
            {
                "name": name,
                "family": info.family,
                "default_input_size": info.default_input_size,
                "min_input_size": info.min_input_size,
                "params": params,
                "description": info.description,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Helpers shared by builders (they import tf_keras lazily, like everything else here).


def patch_inputs(input_size: int, min_input_size: int = 1) -> tuple[Any, Any]:
    """``(inputs, x)``: the ``patch`` Input and, if needed, ``x`` upsampled to ``min_input_size``.

    Upsampling is a bilinear ``Resizing`` layer named ``upsample`` (float32, so it stays exact
    under mixed precision); when ``input_size >= min_input_size`` ``x`` is the input itself.
    """
    keras = load_keras()
    inputs = keras.Input(shape=(input_size, input_size, 3), dtype="float32", name=INPUT_NAME)
    x = inputs
    if input_size < min_input_size:
        x = keras.layers.Resizing(
            min_input_size, min_input_size, interpolation="bilinear", dtype="float32",
            name="upsample",
        )(x)
    return inputs, x


def tumour_output(x: Any) -> Any:
    """The single sigmoid unit every model ends with (float32 even under mixed precision)."""
    keras = load_keras()
    return keras.layers.Dense(1, activation="sigmoid", dtype="float32", name=OUTPUT_NAME)(x)


def check_rate(model: str, param: str, value: Any) -> float:
    """Validate a dropout-like hyperparameter: a number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ConfigError(f"{param} for model {model!r} must be a number in [0, 1), got {value!r}")
    return float(value)


def check_width(model: str, value: Any) -> float:
    """Validate a width multiplier (scales a network's filters and units): a number > 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 16:
        raise ConfigError(f"width for model {model!r} must be a number in (0, 16], got {value!r}")
    return float(value)


def widen(units: int, width: float) -> int:
    """``units`` scaled by a width multiplier, at least 1."""
    return max(1, round(units * width))


def check_int(model: str, param: str, value: Any, minimum: int) -> int:
    """Validate an integer hyperparameter ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{param} for model {model!r} must be an int >= {minimum}, got {value!r}")
    return value
