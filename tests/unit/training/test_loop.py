"""The worker-side building blocks of the training loop, on CPU in this process (no Ray):
what can be checked of the mixed-precision path without a GPU."""

import numpy as np
import pytest

from patchray.config import load_config
from patchray.training.loop import _build_model, weights_digest
from patchray.training.trainer import loop_config


@pytest.fixture
def keras():
    from patchray.models.keras_compat import load_keras

    keras = load_keras()
    yield keras
    keras.mixed_precision.set_global_policy("float32")  # the policy is process-global


def test_mixed_precision_model_trains_with_loss_scaling_and_checkpoints_it(keras, tmp_path):
    import tensorflow as tf

    cfg = load_config(overrides=["train.use_gpu=true", "train.mixed_precision=true",
                                 "train.model=tiny", "train.input_size=16"])
    model = _build_model(loop_config(cfg), keras, tf.distribute.get_strategy())
    assert model.layers[1].compute_dtype == "float16" and model.output.dtype == tf.float32
    assert isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
    x = np.random.default_rng(0).random((4, 16, 16, 3), dtype=np.float32)
    model.fit(x, np.array([0, 1, 0, 1], np.float32), epochs=1, verbose=0)
    assert int(model.optimizer.iterations.numpy()) == 1

    # What the loop checkpoints (model + model.optimizer) restores, loss scale included.
    assert int(model.optimizer.dynamic_counter.numpy()) == 1  # good steps since last rescale
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(tmp_path / "c"))
    again = _build_model(loop_config(cfg), keras, tf.distribute.get_strategy())
    assert int(again.optimizer.dynamic_counter.numpy()) == 0
    tf.train.Checkpoint(model=again, optimizer=again.optimizer).restore(path).expect_partial()
    assert int(again.optimizer.dynamic_counter.numpy()) == 1
    assert float(again.optimizer.loss_scale.numpy()) == float(model.optimizer.loss_scale.numpy())
    assert weights_digest(again.get_weights()) == weights_digest(model.get_weights())


def test_float32_model_keeps_the_plain_optimizer(keras):
    import tensorflow as tf

    cfg = load_config(overrides=["train.model=tiny", "train.input_size=16"])
    model = _build_model(loop_config(cfg), keras, tf.distribute.get_strategy())
    assert model.layers[1].compute_dtype == "float32"
    assert not isinstance(model.optimizer, keras.mixed_precision.LossScaleOptimizer)
