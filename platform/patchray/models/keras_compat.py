"""Which Keras patchray trains with, and how to get it.

patchray trains with legacy Keras 2 (``tf_keras``): Keras 3 ``fit`` fails under
``MultiWorkerMirroredStrategy`` (tensorflow#72388, keras#20585). ``tf.keras`` inside
TensorFlow and Ray's TensorFlow helpers must agree with us, so ``TF_USE_LEGACY_KERAS=1``
has to be in the environment *before* TensorFlow is first imported in a process. Call
:func:`load_keras` instead of importing TensorFlow or Keras directly.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType

LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}


def ensure_legacy_keras_env() -> None:
    """Set ``TF_USE_LEGACY_KERAS=1`` for this process, or fail if it is too late to matter."""
    if os.environ.get("TF_USE_LEGACY_KERAS") == "1":
        return
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            "TensorFlow was imported before TF_USE_LEGACY_KERAS=1 was set; tf.keras would be "
            "Keras 3. Set TF_USE_LEGACY_KERAS=1 in the environment (Ray: runtime_env env_vars) "
            "or call patchray.models.keras_compat.load_keras() before importing TensorFlow."
        )
    os.environ.update(LEGACY_KERAS_ENV)


def load_keras() -> ModuleType:
    """Return the ``tf_keras`` module, with the environment set so ``tf.keras`` is the same."""
    ensure_legacy_keras_env()
    import tf_keras

    return tf_keras


def load_tensorflow() -> ModuleType:
    """Return ``tensorflow``, imported with legacy Keras selected."""
    ensure_legacy_keras_env()
    import tensorflow as tf

    return tf
