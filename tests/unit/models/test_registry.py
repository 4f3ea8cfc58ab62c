"""Model registry and architectures (patchray.models).

TensorFlow is imported inside the tests (through patchray.models.keras_compat) so collection
stays fast. Tests that build the large ImageNet applications are marked ``integration``; the
unit tests only build small models, MobileNetV2 at 32 px and InceptionV3 once.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from patchray.errors import ConfigError, UnknownModelError
from patchray.models import create_model, describe_models, get_model_info, list_models

PLATFORM_DIR = Path(__file__).resolve().parents[3] / "platform"

APPLICATIONS = [
    "densenet121",
    "efficientnetv2_b0",
    "inception_v3",
    "mobilenet_v2",
    "resnet50",
    "vgg19",
]


def _keras():
    from patchray.models.keras_compat import load_keras

    return load_keras()


def _batch(size: int, n: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, size, size, 3), dtype=np.float32)


def _layers_of(model, cls_name: str) -> list:
    return [layer for layer in model.layers if type(layer).__name__ == cls_name]


def test_import_does_not_import_tensorflow() -> None:
    code = (
        "import sys, patchray.models as m; m.list_models(); m.get_model_info('cnn6');"
        "bad = [k for k in ('tensorflow', 'tf_keras', 'keras') if k in sys.modules];"
        "assert not bad, bad"
    )
    env = {**os.environ, "PYTHONPATH": str(PLATFORM_DIR)}
    env.pop("TF_USE_LEGACY_KERAS", None)
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=60)


def test_unknown_model_suggests_close_matches() -> None:
    with pytest.raises(UnknownModelError) as exc:
        create_model("cnn7")
    msg = str(exc.value)
    assert msg.startswith("unknown model 'cnn7'; did you mean: cnn6")
    assert "cnn2" in msg and "patchray models lists all" in msg
    assert isinstance(exc.value, KeyError)
    with pytest.raises(UnknownModelError, match=r"^unknown model 'zzzzzzzz' \(patchray models"):
        get_model_info("zzzzzzzz")


def test_list_models_pattern() -> None:
    assert list_models("cnn*") == ["cnn2", "cnn6"]
    assert list_models("wrn*") == ["wrn16_4", "wrn28_10"]
    everything = list_models()
    assert everything == sorted(everything)
    assert set(everything) >= {"tiny", "cnn2", "cnn6", "wideresnet", *APPLICATIONS}
    assert list_models("nothing*") == []


def test_model_info() -> None:
    info = get_model_info("inception_v3")
    assert (info.family, info.default_input_size, info.min_input_size) == ("application", 50, 75)
    assert info.hyperparameters() == {
        "weights": None, "mode": "full", "finetune_layers": 20, "dropout": 0.2
    }
    assert get_model_info("cnn6").hyperparameters() == {
        "dropout": 0.3, "dense_dropout": 0.5, "bn_momentum": 0.9, "width": 1.0
    }
    assert get_model_info("wideresnet").hyperparameters() == {
        "depth": 16, "width": 4, "dropout": 0.0
    }
    assert {get_model_info(n).family for n in list_models()} <= {
        "small_cnn", "wideresnet", "application", "test"
    }
    assert all(get_model_info(n).description for n in list_models())


def test_unknown_kwarg_is_rejected_with_accepted_names() -> None:
    with pytest.raises(ConfigError) as exc:
        create_model("cnn6", dropuot=0.1)
    msg = str(exc.value)
    assert "'dropuot'" in msg and "dropout" in msg and "dense_dropout" in msg
    with pytest.raises(ConfigError, match=r"accepted keyword arguments: width, dropout"):
        create_model("cnn2", dense_dropout=0.1)
    with pytest.raises(ConfigError, match="weights, mode, finetune_layers, dropout"):
        create_model("mobilenet_v2", pretrained=True)
    with pytest.raises(ConfigError, match="'depth'"):  # aliases fix the architecture
        create_model("wrn28_10", depth=16)


@pytest.mark.parametrize("size", [0, -3, 50.0, "50", True])
def test_bad_input_size_is_rejected(size) -> None:
    with pytest.raises(ConfigError, match="input_size"):
        create_model("tiny", input_size=size)


def test_tiny_model_contract() -> None:
    model = create_model("tiny")
    assert model.name == "tiny"
    assert model.input_shape == (None, 50, 50, 3)
    assert model.input.name.startswith("patch") and model.inputs[0].dtype.name == "float32"
    assert model.output_shape == (None, 1)
    assert model.layers[-1].name == "tumour_probability"
    assert model.count_params() == 3 * 3 * 3 * 4 + 4 + 4 + 1
    y = model.predict(_batch(50), verbose=0)
    assert y.dtype == np.float32 and ((y >= 0) & (y <= 1)).all()


def test_output_is_float32_under_mixed_precision() -> None:
    keras = _keras()
    keras.mixed_precision.set_global_policy("mixed_float16")
    try:
        model = create_model("tiny", input_size=8)
        assert model.layers[1].compute_dtype == "float16"
        assert model.output.dtype.name == "float32"
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_cnn2_and_cnn6_architecture() -> None:
    keras = _keras()
    cnn2 = create_model("cnn2")
    convs = _layers_of(cnn2, "Conv2D")
    assert [(c.filters, c.kernel_size, c.padding) for c in convs] == [
        (32, (5, 5), "same"), (64, (5, 5), "same")
    ]
    assert [p.pool_size for p in _layers_of(cnn2, "MaxPooling2D")] == [(2, 2), (2, 2)]
    assert [(d.units, d.activation.__name__) for d in _layers_of(cnn2, "Dense")] == [
        (256, "relu"), (1, "sigmoid")
    ]
    # 50 -> 25 -> 12 after two pools: 12*12*64 = 9216 features into Dense 256
    assert cnn2.count_params() == (5 * 5 * 3 * 32 + 32) + (5 * 5 * 32 * 64 + 64) + (
        9216 * 256 + 256
    ) + 257

    cnn6 = create_model("cnn6", dropout=0.25)
    convs = _layers_of(cnn6, "Conv2D")
    assert [c.filters for c in convs] == [32, 32, 64, 64, 128, 128]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" for c in convs)
    assert len(_layers_of(cnn6, "BatchNormalization")) == 7  # six convs + Dense 256
    assert len(_layers_of(cnn6, "MaxPooling2D")) == 3
    assert [d.rate for d in _layers_of(cnn6, "Dropout")] == [0.25, 0.25, 0.25, 0.5]
    # every conv is followed by BN then ReLU
    names = [layer.name for layer in cnn6.layers]
    for i in range(1, 7):
        assert names[names.index(f"conv{i}") + 1 : names.index(f"conv{i}") + 3] == [
            f"bn{i}", f"relu{i}"
        ]
    assert cnn6.count_params() == 1_469_281  # 1.18M of it is Dense 4608 -> 256
    assert not any(isinstance(layer, keras.layers.Resizing) for layer in cnn6.layers)

    for model in (cnn2, cnn6):
        y = model.predict(_batch(50), verbose=0)
        assert y.shape == (2, 1) and y.dtype == np.float32
        assert ((y >= 0) & (y <= 1)).all()

    with pytest.raises(ConfigError, match="dense_dropout"):
        create_model("cnn6", dense_dropout=1.0)


def test_small_cnn_upsamples_inputs_below_its_minimum() -> None:
    model = create_model("cnn6", input_size=4)
    assert model.input_shape == (None, 4, 4, 3)
    assert model.get_layer("upsample").output_shape == (None, 8, 8, 3)
    assert model.predict(_batch(4), verbose=0).shape == (2, 1)


def test_wideresnet_depth_validation() -> None:
    for depth in (15, 4, 29, "16", True):
        with pytest.raises(ConfigError, match=r"e\.g\. 10, 16, 22, 28"):
            create_model("wideresnet", depth=depth)
    with pytest.raises(ConfigError, match="width"):
        create_model("wideresnet", width=0)

    model = create_model("wideresnet", input_size=16, depth=10, width=2, dropout=0.1)
    adds = _layers_of(model, "Add")
    assert len(adds) == 3  # (10 - 4) / 6 = 1 block per group
    shortcuts = [layer for layer in model.layers if layer.name.endswith("shortcut")]
    assert [(s.filters, s.kernel_size, s.strides) for s in shortcuts] == [
        (32, (1, 1), (1, 1)), (64, (1, 1), (2, 2)), (128, (1, 1), (2, 2))
    ]
    assert len(_layers_of(model, "Dropout")) == 3
    assert model.layers[-2].name == "gap" and model.output_shape == (None, 1)
    assert model.predict(_batch(16), verbose=0).shape == (2, 1)

    wrn = create_model("wrn16_4")
    assert wrn.name == "wrn16_4"
    assert wrn.count_params() == 2_750_193  # paper: 2.7M
    assert len(_layers_of(wrn, "Add")) == 6


def test_small_input_upsampled_for_inception() -> None:
    from patchray.models.applications import get_base_model

    model = create_model("inception_v3", input_size=50)
    assert model.input_shape == (None, 50, 50, 3)
    assert model.get_layer("upsample").output_shape == (None, 75, 75, 3)
    assert get_base_model(model).input_shape == (None, 75, 75, 3)
    assert model.output_shape == (None, 1)


def test_frozen_mode_freezes_base() -> None:
    from patchray.models.applications import get_base_model

    full = create_model("mobilenet_v2", input_size=32)
    base = get_base_model(full)
    assert base.trainable and len(full.trainable_weights) == len(base.trainable_weights) + 2
    assert any("bn" in w.name.lower() for w in base.trainable_weights)  # BN gamma/beta train

    frozen = create_model("mobilenet_v2", input_size=32, mode="frozen")
    base = get_base_model(frozen)
    assert not base.trainable and base.trainable_weights == []
    assert [w.name for w in frozen.trainable_weights] == [
        "tumour_probability/kernel:0", "tumour_probability/bias:0"
    ]
    assert len(frozen.non_trainable_weights) == len(base.weights)

    with pytest.raises(ConfigError, match="mode"):
        create_model("mobilenet_v2", input_size=32, mode="partial")


def test_finetune_mode_trains_top_n_only(tmp_path: Path) -> None:
    from patchray.models.applications import get_base_model

    keras = _keras()
    n = 12
    model = create_model("mobilenet_v2", input_size=32, mode="finetune", finetune_layers=n)
    base = get_base_model(model)
    top, rest = base.layers[-n:], base.layers[:-n]
    bn = keras.layers.BatchNormalization
    assert not any(layer.trainable for layer in rest)
    assert not any(layer.trainable for layer in base.layers if isinstance(layer, bn))
    assert all(layer.trainable for layer in top if not isinstance(layer, bn))
    expected = sum(len(layer.weights) for layer in top if not isinstance(layer, bn))
    assert expected > 0 and any(layer.weights for layer in top if isinstance(layer, bn))
    assert len(base.trainable_weights) == expected
    assert len(model.trainable_weights) == expected + 2  # + the sigmoid unit

    # The trainable state (and the base's training=False call) survives a .keras round trip,
    # so resuming fine-tuning from a checkpoint keeps the same layers frozen.
    path = tmp_path / "finetune.keras"
    model.save(path)
    reloaded = keras.models.load_model(path)
    assert len(reloaded.trainable_weights) == expected + 2

    with pytest.raises(ConfigError, match="finetune_layers"):
        create_model("mobilenet_v2", input_size=32, mode="finetune", finetune_layers=-1)


def test_weights_file_roundtrip(tmp_path: Path) -> None:
    from patchray.models.applications import get_base_model

    first = get_base_model(create_model("mobilenet_v2", input_size=32))
    path = tmp_path / "mobilenet_v2_notop.h5"
    first.save_weights(str(path))

    loaded = get_base_model(create_model("mobilenet_v2", input_size=32, weights=path))
    assert len(loaded.weights) == len(first.weights)
    for a, b in zip(first.weights, loaded.weights, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    fresh = get_base_model(create_model("mobilenet_v2", input_size=32))
    assert not all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(first.weights, fresh.weights)
    )

    missing = tmp_path / "nope.h5"
    with pytest.raises(ConfigError, match=str(missing)):
        create_model("mobilenet_v2", input_size=32, weights=str(missing))
    with pytest.raises(ConfigError, match="nothing is downloaded"):
        create_model("mobilenet_v2", input_size=32, weights="imagenet")
    not_h5 = tmp_path / "weights.h5"
    not_h5.write_text("not hdf5")
    with pytest.raises(ConfigError, match="not an HDF5"):
        create_model("mobilenet_v2", input_size=32, weights=not_h5)
    # A weights file of another architecture must not "load" silently (by_name skips names).
    other = tmp_path / "tiny.h5"
    create_model("tiny").save_weights(str(other))
    with pytest.raises(ConfigError, match="has no weights for"):
        create_model("mobilenet_v2", input_size=32, weights=other)


def test_model_save_load_roundtrip(tmp_path: Path) -> None:
    keras = _keras()
    model = create_model("cnn6")
    x = _batch(50, n=4)
    expected = model.predict(x, verbose=0)
    model.save(tmp_path / "cnn6.keras")
    reloaded = keras.models.load_model(tmp_path / "cnn6.keras")
    assert reloaded.name == "cnn6"
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), expected)


def test_saved_model_export_keeps_contract(tmp_path: Path) -> None:
    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    model = create_model("tiny", input_size=8)
    x = _batch(8)
    tf.saved_model.save(model, str(tmp_path / "sm"))
    serve = tf.saved_model.load(str(tmp_path / "sm")).signatures["serving_default"]
    out = serve(patch=tf.constant(x))
    assert list(out) == ["tumour_probability"]
    np.testing.assert_allclose(out["tumour_probability"].numpy(), model(x).numpy(), rtol=1e-6)


def test_describe_models() -> None:
    rows = describe_models("tiny")
    assert rows == [
        {
            "name": "tiny",
            "family": "test",
            "default_input_size": 50,
            "min_input_size": 1,
            "params": 117,
            "description": get_model_info("tiny").description,
        }
    ]
    assert [r["name"] for r in describe_models("cnn*")] == ["cnn2", "cnn6"]


# ---------------------------------------------------------------------------------------------
# Large ImageNet applications (slower: a few seconds each to build on CPU).


def test_width_multiplier_and_dropout_are_tunable_on_the_small_cnns() -> None:
    from patchray.errors import ConfigError

    base = create_model("cnn2", input_size=32)
    wide = create_model("cnn2", input_size=32, width=2.0, dropout=0.3)
    assert base.get_layer("conv1").filters == 32 and wide.get_layer("conv1").filters == 64
    assert wide.get_layer("fc").units == 512 and wide.get_layer("fc_dropout").rate == 0.3
    assert create_model("cnn6", input_size=32, width=0.5).get_layer("conv1").filters == 16
    assert create_model("tiny", input_size=16, width=0.25).get_layer("conv").filters == 1
    with pytest.raises(ConfigError, match="width"):
        create_model("cnn2", input_size=32, width=0)
