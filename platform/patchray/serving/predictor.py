"""OpenVINO inference on patches, driven entirely by the artifact's metadata.

Used by Ray Serve, by batch evaluation and by the benchmarks. Imports OpenVINO, numpy and
Pillow only: the serving path never imports TensorFlow.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchray.data.transforms import decode_patches, normalise
from patchray.errors import ArtifactError
from patchray.export.artifact import ModelMetadata, read_metadata


class PatchPredictor:
    """Load an exported artifact and score patches (probability of tumour)."""

    def __init__(
        self,
        model_dir: str | Path,
        *,
        precision: str = "fp32",
        device: str = "CPU",
        inference_precision: str | None = "f32",
        num_threads: int | None = None,
        encoding: str = "png",
    ):
        import openvino as ov

        self.model_dir = Path(model_dir)
        self.metadata: ModelMetadata = read_metadata(self.model_dir)
        if precision not in self.metadata.files:
            raise ArtifactError(
                f"{self.model_dir}: no {precision!r} model; available: "
                f"{', '.join(self.metadata.files)}"
            )
        config: dict[str, Any] = {}
        if inference_precision:
            # The threshold and metrics were computed in f32; bf16 on AVX512-BF16 CPUs
            # shifts probabilities slightly, enough to flip patches near the threshold.
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        self.precision = precision
        self.encoding = encoding  # of the ``image`` column in __call__ (a dataset's records)
        self._compiled = ov.Core().compile_model(
            self.model_dir / self.metadata.files[precision], device, config
        )
        self.size = self.metadata.input.size

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """float32 NHWC in [0, 1] -> probabilities, shape (N,)."""
        if x.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        return np.asarray(self._compiled(x)[0], dtype=np.float32).reshape(-1)

    def predict_images(self, images: Sequence[bytes]) -> np.ndarray:
        """PNG/JPEG bytes -> probabilities, with the same decode/pad/scale as training."""
        return self.predict_arrays(normalise(decode_patches(images, self.size)))

    def label(self, probability: float) -> int:
        return int(probability >= self.metadata.threshold)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Ray Data ``map_batches`` form: a dataset's records (``image`` in ``self.encoding``,
        ``height``/``width`` for raw, optional ``label``) -> ``probability``."""
        x = decode_patches(list(batch["image"]), self.size, encoding=self.encoding,
                           heights=batch.get("height"), widths=batch.get("width"))
        out = {"probability": self.predict_arrays(normalise(x))}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out
