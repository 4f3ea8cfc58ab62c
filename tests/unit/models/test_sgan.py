"""The semi-supervised GAN models (patchray.models.sgan) in one process, no Ray: the call
contract, the SGAN train step, checkpoint/resume state and OpenVINO export."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from patchray.models import create_model, get_model_info

SIZE = 16


def _keras():
    from patchray.models.keras_compat import load_keras

    return load_keras()


def _tf():
    from patchray.models.keras_compat import load_tensorflow

    return load_tensorflow()


def _batch(n: int = 8, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _compiled(name: str = "sgan_tiny", size: int = SIZE, **kwargs):
    keras = _keras()
    _tf().keras.utils.set_random_seed(0)
    model = create_model(name, input_size=size, **kwargs)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=keras.losses.BinaryCrossentropy())
    return model


def test_registered_as_semi_supervised() -> None:
    for name in ("sgan_cnn6", "sgan_tiny"):
        assert get_model_info(name).semi_supervised
    assert not get_model_info("cnn6").semi_supervised
    assert get_model_info("sgan_cnn6").hyperparameters()["latent_dim"] == 100


@pytest.mark.parametrize("name,size", [("sgan_tiny", SIZE), ("sgan_cnn6", 50)])
def test_call_is_the_tumour_probability_of_the_two_class_logits(name, size) -> None:
    tf = _tf()
    model = create_model(name, input_size=size)
    x = _batch(4, size)
    assert [t.name.split(":")[0] for t in model.inputs] == ["patch"]
    assert model.output_names == ["tumour_probability"]
    p = model(x, training=False).numpy()
    assert p.shape == (4, 1) and p.dtype == np.float32 and ((p >= 0) & (p <= 1)).all()
    logits, _ = model.discriminator(x, training=False)
    np.testing.assert_allclose(p[:, 0], tf.nn.softmax(logits)[:, 1].numpy(), rtol=1e-5, atol=1e-6)
    # The generator makes patches of the model's size in [0, 1] (50 is no power of two).
    fake = model.generator(tf.random.normal((3, model.latent_dim)), training=False).numpy()
    assert fake.shape == (3, size, size, 3) and fake.min() >= 0 and fake.max() <= 1


@pytest.fixture(scope="module")
def trained():
    """sgan_tiny after 2 epochs of 2 steps on 16 rows (half unlabelled), and what it was
    before: one traced train step shared by the tests below."""
    model = _compiled()
    x = _batch(16)
    y = np.array([0, 1, -1, -1] * 4, dtype=np.float32)
    w = np.where(y < 0, 0.0, 1.0).astype(np.float32)
    before = {"generator": [v.numpy().copy() for v in model.generator.trainable_variables],
              "discriminator": [v.numpy().copy()
                                for v in model.discriminator.trainable_variables]}
    history = model.fit(x, y, sample_weight=w, batch_size=8, epochs=2, verbose=0).history
    return model, before, history, x, y


def test_train_step_trains_discriminator_and_generator(trained) -> None:
    model, before, history, _, _ = trained
    assert set(history) == {"loss", "supervised_loss", "unsupervised_loss", "generator_loss"}
    assert all(np.isfinite(v).all() for v in history.values())
    assert history["loss"][-1] > 0
    for part in ("generator", "discriminator"):
        now = getattr(model, part).trainable_variables
        assert any(not np.allclose(a, v.numpy()) for a, v in zip(before[part], now)), part
    assert int(model.optimizer.iterations.numpy()) == 4
    assert int(model.generator_optimizer.iterations.numpy()) == 4


def test_unlabelled_rows_do_not_enter_the_supervised_loss() -> None:
    tf = _tf()
    model = _compiled()
    x = _batch(8)
    y = np.array([0, 1, -1, -1, 1, -1, 0, -1], dtype=np.float32)
    w = np.array([1.0, 2.0, 0, 0, 2.0, 0, 1.0, 0], dtype=np.float32)
    z = tf.random.normal((8, model.latent_dim), seed=1)
    base = model.losses_on(x, y, w, z, training=False)
    # Other pixels and (nonzero) weights on the unlabelled rows: same supervised loss.
    other = x.copy()
    other[y < 0] = _batch(4, seed=5)
    w2 = np.where(y < 0, 7.0, w).astype(np.float32)
    again = model.losses_on(other, y, w2, z, training=False)
    assert float(again["supervised_loss"]) == pytest.approx(float(base["supervised_loss"]),
                                                            rel=1e-6)
    assert float(again["unsupervised_loss"]) != pytest.approx(float(base["unsupervised_loss"]))
    # ... and it is the class-weighted mean cross-entropy over the labelled rows.
    logits, _ = model.discriminator(x, training=False)
    keep = y >= 0
    ce = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=y[keep].astype(np.int32), logits=logits.numpy()[keep]).numpy()
    expected = float((w[keep] * ce).sum() / w[keep].sum())
    assert float(base["supervised_loss"]) == pytest.approx(expected, rel=1e-5)
    # A batch without labels has no supervised loss (and no NaN).
    none = model.losses_on(x, -np.ones(8, np.float32), np.zeros(8, np.float32), z,
                           training=False)
    assert float(none["supervised_loss"]) == 0.0 and np.isfinite(float(none["loss"]))


def test_generated_patches_do_not_move_batchnorm_statistics() -> None:
    tf = _tf()
    model, plain = create_model("sgan_tiny", input_size=SIZE), create_model("sgan_tiny",
                                                                             input_size=SIZE)
    plain.set_weights(model.get_weights())
    x = _batch(8)
    y = np.zeros(8, np.float32)
    model.losses_on(x, y, None, tf.random.normal((8, model.latent_dim)), training=True)
    plain.discriminator(x, training=True)  # the real pass alone
    stats = [v.numpy() for v in model.discriminator.non_trainable_variables]
    assert any(not np.allclose(s, 0) for s in stats)  # they moved with the real batch
    for a, b in zip(stats, plain.discriminator.non_trainable_variables):
        np.testing.assert_allclose(a, b.numpy(), rtol=1e-6)


def test_checkpoint_restores_generator_and_both_optimizers(trained, tmp_path: Path) -> None:
    from patchray.training.loop import checkpoint_extras

    tf = _tf()
    model, _, _, x, _ = trained
    extras = checkpoint_extras(model)
    assert list(extras) == ["generator_optimizer"]
    path = tf.train.Checkpoint(model=model, optimizer=model.optimizer, **extras).write(
        str(tmp_path / "ckpt"))

    other = _compiled()
    tf.train.Checkpoint(model=other, optimizer=other.optimizer,
                        **checkpoint_extras(other)).restore(path).expect_partial()
    for a, b in zip(model.generator.weights, other.generator.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(model(x).numpy(), other(x).numpy())
    assert int(other.optimizer.iterations.numpy()) == 4
    assert int(other.generator_optimizer.iterations.numpy()) == 4
    # Adam's moments (created at the first step) are restored then, from the checkpoint.
    reader = tf.train.load_checkpoint(path)
    assert sum(n.startswith("generator_optimizer/_variables/")
               for n in reader.get_variable_to_shape_map()) == 2 * len(
        model.generator.trainable_variables)
    assert checkpoint_extras(create_model("tiny", input_size=SIZE)) == {}


def test_mixed_precision_is_refused() -> None:
    from patchray.errors import ConfigError

    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        with pytest.raises(ConfigError, match="trains in float32 only"):
            create_model("sgan_tiny", input_size=SIZE)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_openvino_export_holds_the_classifier_only(trained, tmp_path: Path) -> None:
    import openvino as ov

    from patchray.export.openvino_export import convert_keras

    model, _, _, x, _ = trained
    xml = convert_keras(model, SIZE, tmp_path / "model.xml")
    ir = ov.Core().read_model(xml)
    assert [i.get_any_name() for i in ir.inputs] == ["patch"]
    assert [o.get_any_name() for o in ir.outputs] == ["tumour_probability"]
    assert list(ir.outputs[0].get_partial_shape())[1] == 1
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    np.testing.assert_allclose(np.asarray(compiled(x)[0]), model(x, training=False).numpy(),
                               atol=1e-5)
    # Only the classifier path: no generator layer made it into the IR.
    assert not any("g_deconv" in op.get_friendly_name() for op in ir.get_ops())
