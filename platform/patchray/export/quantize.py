"""INT8 post-training quantisation of an OpenVINO IR with NNCF (no TensorFlow here).

NNCF quantises the ``openvino.Model`` itself (it no longer takes TensorFlow models):
activation ranges are calibrated on a sample of the training split, fed through the model's
own input contract, so INT8 sees exactly what FP32 was trained on. Optionally
``nncf.quantize_with_accuracy_control`` keeps sensitive layers in FP32 until the validation
AUC drop is inside the gate. Whether the result ships is decided by the caller's gate
(:mod:`patchray.export.precisions`), on the same validation patients for every precision.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)
CALIBRATION_BATCH = 32  # patches per calibration step; NNCF counts subset_size in steps


def _batches(x: np.ndarray, batch: int = CALIBRATION_BATCH) -> list[np.ndarray]:
    return [x[i : i + batch] for i in range(0, len(x), batch)]


def quantize_int8(
    fp32_xml: str | Path, calibration: np.ndarray, out_xml: str | Path, *,
    validation: tuple[np.ndarray, np.ndarray] | None = None, max_auc_drop: float = 0.005,
    seed: int = 0,
) -> Path:
    """Write an INT8 IR of ``fp32_xml`` to ``out_xml``.

    ``calibration``: model input (float32 NHWC, already scaled) from the training split.
    ``validation``: ``(inputs, labels)``; when given, NNCF's accuracy-controlled quantisation
    reverts layers to FP32 until the AUC drop is at most ``max_auc_drop``.
    """
    import nncf
    import openvino as ov

    model = ov.Core().read_model(fp32_xml)
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
    log.info("INT8 IR written to %s (calibrated on %d training patches)", out, len(calibration))
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
