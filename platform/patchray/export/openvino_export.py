"""Convert a training checkpoint to OpenVINO IR, behind a parity gate against Keras.

This is the one place where TensorFlow and OpenVINO meet. The model is rebuilt from the
registry with the checkpoint's recorded architecture, its weights restored, saved as a
TensorFlow SavedModel and converted. The gate: on real patches of the validation split,
decoded by the checkpoint's own input contract, the IR's probabilities must equal Keras's
within ``parity_atol``, or nothing is shipped (:class:`~patchray.errors.ParityError`).

A multi-scale model (two inputs, ``patch`` and ``context``) exports to an IR with both
inputs, named so, each with a dynamic batch; the gate feeds it both views of the validation
patches (the dataset's ``context_image``).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.data.manifest import PatchDataset
from patchray.errors import ParityError
from patchray.registry.card import IR_FILES
from patchray.inference.preprocess import Preprocess
from patchray.training.loop import CHECKPOINT_META, checkpoint_preprocess

log = logging.getLogger(__name__)
PARITY_SAMPLE = 64  # validation patches the gate compares on


@dataclass(frozen=True)
class ExportResult:
    model_xml: Path
    parity_max_abs_diff: float
    parity_patches: int
    architecture: str
    model_args: dict[str, Any]
    preprocess: Preprocess
    epoch: int  # the checkpoint's epoch (0-based)
    # The gate's patches as model input (export times precisions on them): one array, or
    # {"patch": ..., "context": ...} for a multi-scale model.
    sample: Any


def load_checkpoint_model(checkpoint_dir: str | Path) -> tuple[Any, dict[str, Any]]:
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


def convert_keras(model: Any, size: int, xml: Path) -> Path:
    """Keras model -> FP32 OpenVINO IR at ``xml`` (through a SavedModel), dynamic batch; a
    model with several inputs (multi-scale) keeps their Keras names."""
    import openvino as ov

    from patchray.models.keras_compat import load_tensorflow

    tf = load_tensorflow()
    xml.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tf.saved_model.save(model, tmp)
        ov_model = ov.convert_model(tmp)
    if len(ov_model.inputs) == 1:
        ov_model.reshape([-1, size, size, 3])
    else:  # every view has the patch's shape; fed by name (the order is not kept)
        ov_model.reshape({i.get_any_name(): [-1, size, size, 3] for i in ov_model.inputs})
    ov.save_model(ov_model, xml, compress_to_fp16=False)
    return xml


def export_openvino(
    checkpoint_dir: str | Path, out_dir: str | Path, sample: np.ndarray, *,
    parity_atol: float | None = None, context: np.ndarray | None = None,
) -> ExportResult:
    """Write ``out_dir/model.xml`` (FP32 IR). ``sample``: uint8 patches fitted to the model's
    size (``context``: their context views, for a multi-scale model); with ``parity_atol``
    a larger Keras/OpenVINO difference raises ParityError."""
    import openvino as ov

    model, meta = load_checkpoint_model(checkpoint_dir)
    preprocess = checkpoint_preprocess(meta)
    if len(model.inputs) != len(preprocess.input_names):
        raise ParityError(
            f"{checkpoint_dir}: model {meta['model']} has {len(model.inputs)} input(s) but the "
            f"checkpoint's contract says {', '.join(preprocess.input_names)}; refusing to "
            "export a model that would be fed the wrong views")
    xml = convert_keras(model, preprocess.size, Path(out_dir) / IR_FILES["f32"])

    x = preprocess.inputs(sample, context)
    keras_out = np.asarray(model(x, training=False)).reshape(-1)
    # f32 hint: this CPU would otherwise run bf16 and the comparison would measure that.
    compiled = ov.Core().compile_model(xml, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    ov_out = np.asarray(compiled(x)[0]).reshape(-1)
    diff = float(np.max(np.abs(keras_out - ov_out)))
    n = len(sample)
    if parity_atol is not None and diff > parity_atol:
        raise ParityError(
            f"{xml}: OpenVINO output differs from Keras by {diff:.2e} on {n} validation "
            f"patches (> export.parity_atol={parity_atol}); refusing to ship it. Check the "
            "model's layers convert exactly (patchray models), or raise export.parity_atol "
            "if the difference is expected"
        )
    return ExportResult(
        model_xml=xml, parity_max_abs_diff=diff, parity_patches=n,
        architecture=meta["model"], model_args=meta["model_args"], preprocess=preprocess,
        epoch=meta["epoch"], sample=x,
    )


def export_checkpoint(
    checkpoint_dir: str | Path, model_dir: str | Path, dataset: PatchDataset, *,
    parity_atol: float, val_holdout: float = 0.0,
) -> ExportResult:
    """Export the checkpoint to ``model_dir`` and gate it on validation patches."""
    meta = json.loads((Path(checkpoint_dir) / CHECKPOINT_META).read_text())
    preprocess = checkpoint_preprocess(meta)
    rows = dataset.sample_rows("val", PARITY_SAMPLE, val_holdout=val_holdout)
    sample = preprocess.rows(rows, encoding=dataset.encoding)
    context = (preprocess.context_rows(rows, encoding=dataset.encoding)
               if preprocess.multiscale else None)
    exported = export_openvino(checkpoint_dir, model_dir, sample, parity_atol=parity_atol,
                               context=context)
    log.info("exported OpenVINO IR to %s (max |Keras - OpenVINO| = %.1e on %d val patches)",
             model_dir, exported.parity_max_abs_diff, exported.parity_patches)
    return exported
