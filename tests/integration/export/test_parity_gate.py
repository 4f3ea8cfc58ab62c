"""The export gate: OpenVINO must match Keras on real patches, or nothing ships."""

import json

import numpy as np
import pytest

from patchray.errors import ParityError, PatchrayError
from patchray.inference.preprocess import Preprocess

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A checkpoint as the training loop writes it (meta.json + tf.train.Checkpoint)."""
    from patchray.models import create_model
    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    d = tmp_path_factory.mktemp("ckpt")
    model = create_model("tiny", input_size=16)
    saved = tf.train.Checkpoint(model=model).write(str(d / "ckpt"))
    meta = {"epoch": 0, "epochs": 1, "history": [], "tf_checkpoint": saved.split("/")[-1],
            "model": "tiny", "model_args": {}, "input_size": 16, "mixed_precision": False,
            "preprocess": Preprocess(size=16).model_dump(mode="json")}
    (d / "meta.json").write_text(json.dumps(meta))
    return d


def _sample() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3), dtype=np.uint8)


def test_the_gate_passes_an_exact_conversion(tiny_checkpoint, tmp_path):
    from patchray.export.openvino_export import export_openvino

    out = export_openvino(tiny_checkpoint, tmp_path / "m", _sample(), parity_atol=1e-4)
    assert out.parity_max_abs_diff <= 1e-4 and out.parity_patches == 8
    assert out.preprocess == Preprocess(size=16) and (tmp_path / "m" / "model.xml").is_file()
    assert not (tmp_path / "m" / "card.json").exists()  # written once, by the registry


def test_a_difference_over_the_tolerance_refuses_to_ship(tiny_checkpoint, tmp_path):
    from patchray.export.openvino_export import export_openvino

    # No real model differs by more than 0: a negative tolerance stands for "too large".
    with pytest.raises(ParityError, match=r"OpenVINO output differs from Keras by .* on 8 "
                                          r"validation patches .*refusing to ship") as e:
        export_openvino(tiny_checkpoint, tmp_path / "m", _sample(), parity_atol=-1.0)
    assert isinstance(e.value, PatchrayError)  # the CLI prints it as one line, exit 2
    assert not (tmp_path / "m" / "card.json").exists()
