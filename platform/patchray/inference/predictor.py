"""OpenVINO inference on patches: a compiled IR plus its :class:`Preprocess`.

A predictor is built either from an exported artifact (``from_artifact``: IR files and
``metadata.json``, what serving loads) or from an IR and a contract in memory (what
evaluation uses before any metadata exists, so the export step writes metadata once).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from patchray.errors import ArtifactError
from patchray.inference.preprocess import Preprocess

# The threshold and metrics are computed in f32; bf16 (OpenVINO's default on AVX512-BF16
# CPUs) shifts probabilities slightly, enough to flip patches near the threshold.
DEFAULT_INFERENCE_PRECISION = "f32"


class PatchPredictor:
    """Score patches (probability of tumour) with an OpenVINO IR."""

    def __init__(
        self,
        model_xml: str | Path,
        preprocess: Preprocess,
        *,
        device: str = "CPU",
        inference_precision: str | None = DEFAULT_INFERENCE_PRECISION,
        num_threads: int | None = None,
        metadata: Any = None,
    ):
        import openvino as ov

        config: dict[str, Any] = {}
        if inference_precision:
            config["INFERENCE_PRECISION_HINT"] = inference_precision
        if num_threads:
            config["INFERENCE_NUM_THREADS"] = num_threads
        if not Path(model_xml).is_file():
            raise ArtifactError(f"{model_xml}: OpenVINO IR not found")
        self.model_xml = Path(model_xml)
        self.preprocess = preprocess
        self.metadata = metadata  # ModelMetadata when loaded from an artifact
        self._compiled = ov.Core().compile_model(self.model_xml, device, config)

    @classmethod
    def from_artifact(cls, model_dir: str | Path, *, precision: str = "fp32",
                      **kwargs: Any) -> PatchPredictor:
        """Load an exported artifact (``model.xml`` + ``metadata.json``)."""
        from patchray.export.artifact import read_metadata

        model_dir = Path(model_dir)
        metadata = read_metadata(model_dir)
        if precision not in metadata.files:
            raise ArtifactError(f"{model_dir}: no {precision!r} model; available: "
                                f"{', '.join(metadata.files)}")
        return cls(model_dir / metadata.files[precision], metadata.input, metadata=metadata,
                   **kwargs)

    @property
    def size(self) -> int:
        return self.preprocess.size

    @property
    def threshold(self) -> float:
        if self.metadata is None:
            raise ArtifactError(f"{self.model_xml}: no threshold: this predictor was built "
                                "without metadata (evaluation chooses the threshold)")
        return float(self.metadata.threshold)

    def predict_arrays(self, x: np.ndarray) -> np.ndarray:
        """Model input (float32 NHWC, see Preprocess.to_input) -> probabilities, (N,)."""
        if x.shape[0] == 0:
            return np.zeros((0,), dtype=np.float32)
        return np.asarray(self._compiled(x)[0], dtype=np.float32).reshape(-1)

    def predict_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, size, size, 3)`` patches -> probabilities."""
        return self.predict_arrays(self.preprocess.to_input(pixels))

    def predict_images(self, images: Sequence[bytes], **kwargs: Any) -> np.ndarray:
        """PNG/JPEG (or a dataset's raw) bytes -> probabilities, as training decoded them."""
        return self.predict_arrays(self.preprocess(images, **kwargs))

    def label(self, probability: float) -> int:
        return int(probability >= self.threshold)


class BatchScorer:
    """Ray Data ``map_batches`` callable: a dataset's records -> ``probability``
    (and ``label`` passed through). Built on each Ray worker from picklable arguments."""

    def __init__(self, model_xml: str, preprocess: dict[str, Any], encoding: str):
        self.predictor = PatchPredictor(model_xml, Preprocess.model_validate(preprocess))
        self.encoding = encoding

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        p = self.predictor.predict_images(list(batch["image"]), encoding=self.encoding,
                                          heights=batch.get("height"),
                                          widths=batch.get("width"))
        out = {"probability": p}
        if "label" in batch:
            out["label"] = np.asarray(batch["label"])
        return out
