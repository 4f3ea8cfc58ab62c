"""Convert a training checkpoint to OpenVINO IR and check it against Keras.

This is the one place where TensorFlow and OpenVINO meet. The model is rebuilt from the
registry with the checkpoint's recorded architecture, its weights restored, saved as a
TensorFlow SavedModel and converted; a parity check on real patches guards the conversion.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from patchray.export.artifact import IR_FILES
from patchray.training.loop import CHECKPOINT_META


@dataclass(frozen=True)
class ExportResult:
    model_xml: Path
    parity_max_abs_diff: float
    architecture: str
    model_args: dict
    input_size: int


def load_checkpoint_model(checkpoint_dir: str | Path):
    """Rebuild the Keras model a training checkpoint was written from, weights restored."""
    from patchray.models import create_model
    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    meta = json.loads((Path(checkpoint_dir) / CHECKPOINT_META).read_text())
    model = create_model(meta["model"], input_size=meta["input_size"], **meta["model_args"])
    tf.train.Checkpoint(model=model).restore(
        os.path.join(checkpoint_dir, meta["tf_checkpoint"])
    ).expect_partial()
    return model, meta


def export_openvino(
    checkpoint_dir: str | Path, out_dir: str | Path, sample: np.ndarray
) -> ExportResult:
    """Write ``out_dir/model.xml`` (FP32 IR); ``sample`` (float32 NHWC) is used for parity."""
    import openvino as ov

    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    model, meta = load_checkpoint_model(checkpoint_dir)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(model, tmp)
        ov_model = ov.convert_model(tmp)
    ov_model.reshape([-1, meta["input_size"], meta["input_size"], 3])  # dynamic batch
    xml = out / IR_FILES["fp32"]
    ov.save_model(ov_model, xml, compress_to_fp16=False)

    keras_out = np.asarray(model(sample, training=False)).reshape(-1)
    # f32 hint: this CPU would otherwise run bf16 and the comparison would measure that.
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = np.asarray(compiled(sample)[0]).reshape(-1)
    return ExportResult(
        model_xml=xml,
        parity_max_abs_diff=float(np.max(np.abs(keras_out - ov_out))),
        architecture=meta["model"],
        model_args=meta["model_args"],
        input_size=meta["input_size"],
    )
