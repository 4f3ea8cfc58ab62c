"""Patch classifier models: a timm-style registry of ``tf_keras`` (legacy Keras 2) builders.

>>> from patchray.models import create_model, list_models
>>> list_models("cnn*")
['cnn2', 'cnn6']
>>> model = create_model("cnn6", input_size=50, dropout=0.25)  # doctest: +SKIP

Importing this package registers every model but does not import TensorFlow; ``tf_keras`` is
loaded (with ``TF_USE_LEGACY_KERAS=1``) only when a model is built. Models take ``float32`` RGB
patches scaled to [0, 1] and return one float32 sigmoid probability of tumour; see
:mod:`patchray.models.registry` for the full contract.
"""

from __future__ import annotations

# Builder modules register their models on import (they do not import TensorFlow).
from patchray.models import (  # noqa: F401
    applications, multiscale, sgan, small_cnns, wideresnet,
)
from patchray.models.registry import (
    ModelInfo,
    create_model,
    describe_models,
    get_model_info,
    list_models,
    register_model,
)

__all__ = [
    "ModelInfo",
    "create_model",
    "describe_models",
    "get_model_info",
    "list_models",
    "register_model",
]
