"""INT8 post-training quantisation of an OpenVINO IR with NNCF (no TensorFlow here).

NNCF quantises the ``openvino.Model`` itself (it no longer takes TensorFlow models):
activation ranges are calibrated on a sample of the training split, fed through the model's
own input contract, so INT8 sees exactly what FP32 was trained on. Optionally
``nncf.quantize_with_accuracy_control`` keeps sensitive layers in FP32 until the validation
AUC drop is inside the gate. Whether the result ships is decided by the caller's gate
(:mod:`patchray.export.precisions`), on the same validation patients for every precision.

A multi-scale IR (inputs ``patch`` and ``context``) is calibrated on both views: the
calibration and validation inputs are then dicts ``{"patch": ..., "context": ...}``
(:meth:`patchray.inference.preprocess.Preprocess.row_inputs`), batched together, fed by name.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
CALIBRATION_BATCH = 32  # patches per calibration step; NNCF counts subset_size in steps


def _batches(x: Any, batch: int = CALIBRATION_BATCH) -> list[Any]:
    if isinstance(x, dict):  # one array per input name, sliced together
        n = len(next(iter(x.values())))
        return [{k: v[i : i + batch] for k, v in x.items()} for i in range(0, n, batch)]
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def _count(x: Any) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def check_calibration(model: Any, calibration: Any, where: Any) -> None:
    """Calibration must feed every input of the IR: a dict of its input names for a
    multi-scale model, one array for a single-input one."""
    names = sorted(i.get_any_name() for i in model.inputs)
    if len(names) > 1 and (not isinstance(calibration, dict) or sorted(calibration) != names):
        given = sorted(calibration) if isinstance(calibration, dict) else "one array"
        raise ValueError(
            f"{where}: INT8 calibration of a model with inputs {', '.join(names)} (multi-scale) "
            f"needs every view, as {{name: array}}; got {given} (Preprocess.row_inputs "
            "prepares both)")
    if len(names) == 1 and isinstance(calibration, dict):
        raise ValueError(f"{where}: a single-input model is calibrated on one array, got "
                         f"views {sorted(calibration)}")


def quantize_int8(
    fp32_xml: str | Path, calibration: np.ndarray, out_xml: str | Path, *,
    validation: tuple[np.ndarray, np.ndarray] | None = None, max_auc_drop: float = 0.005,
    seed: int = 0,
) -> Path:
    """Write an INT8 IR of ``fp32_xml`` to ``out_xml``.

    ``calibration``: model input (float32 NHWC, already scaled) from the training split;
    for a multi-scale IR ``{"patch": ..., "context": ...}``.
    ``validation``: ``(inputs, labels)``; when given, NNCF's accuracy-controlled quantisation
    reverts layers to FP32 until the AUC drop is at most ``max_auc_drop``.
    """
    import nncf
    import openvino as ov

    model = ov.Core().read_model(fp32_xml)
    check_calibration(model, calibration, fp32_xml)
    calib = nncf.Dataset(_batches(calibration))
    steps = len(_batches(calibration))
    if validation is None:
        quantized = nncf.quantize(model, calib, subset_size=steps)
    else:
        x_val, y_val = validation
        quantized = nncf.quantize_with_accuracy_control(
            model, calib, nncf.Dataset(list(zip(_batches(x_val), _batches(y_val)))),
            validation_fn=_auc_validation(), max_drop=max_auc_drop,
            drop_type=nncf.DropType.ABSOLUTE, subset_size=steps,
        )
    out = Path(out_xml)
    ov.save_model(quantized, out, compress_to_fp16=False)
    log.info("INT8 IR written to %s (calibrated on %d training patches)", out,
             _count(calibration))
    return out


def _auc_validation() -> Callable[..., float]:
    """NNCF's ``validation_fn``: compiled model + (inputs, labels) batches -> val AUC."""
    from patchray.evaluation.metrics import roc_auc

    def validate(compiled, data) -> float:
        probs, labels = [], []
        for x, y in data:
            probs.append(np.asarray(compiled(x)[0]).reshape(-1))
            labels.append(np.asarray(y).reshape(-1))
        return float(roc_auc(np.concatenate(labels), np.concatenate(probs)))

    return validate
