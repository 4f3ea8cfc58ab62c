"""What a served answer says, from probabilities and the model that produced them.

Plain functions (no Ray, no HTTP): the ingress calls them; unit tests call them directly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

TTA_VIEWS = 8  # the dihedral group of the square: 4 rotations, each also mirrored


@dataclass(frozen=True)
class ModelInfo:
    """The model version that scored a batch: every answer names exactly this."""

    name: str
    version: str
    precision: str
    sha256: str  # of the served IR's weights (.bin), as registered in its card
    threshold: float  # on the scale of the served probability (calibrated, if calibration)
    class_names: tuple[str, ...]
    input: dict[str, Any]  # the Preprocess contract (patch size, padding, scaling)
    ref: str
    # The calibration method the served probabilities went through (the card precision's,
    # fitted on validation); "none": the model's raw output.
    calibration: str = "none"

    @property
    def size(self) -> int:
        return int(self.input["size"])

    def public(self) -> dict[str, str]:
        return {"name": self.name, "version": self.version, "precision": self.precision,
                "sha256": self.sha256, "calibration": self.calibration}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(**{**data, "class_names": tuple(data["class_names"])})


def tta_views(pixels: np.ndarray) -> np.ndarray:
    """``(N, S, S, 3)`` -> ``(8N, S, S, 3)``: view ``v`` of every patch, for v in 0..7, in
    that order. Patches are square, so every view keeps the model's input shape."""
    views = []
    for k in range(4):
        rotated = np.rot90(pixels, k=k, axes=(1, 2))
        views.extend([rotated, rotated[:, :, ::-1]])
    return np.ascontiguousarray(np.concatenate(views))


def tta_mean(probabilities: np.ndarray, n: int) -> np.ndarray:
    """The mean over the 8 views of each of ``n`` patches (inverse of :func:`tta_views`)."""
    return probabilities.reshape(TTA_VIEWS, n).mean(axis=0)


def review_band(threshold: float, margin: float) -> tuple[float, float]:
    return max(0.0, threshold - margin), min(1.0, threshold + margin)


def predictions(probabilities: np.ndarray, info: ModelInfo, margin: float) -> list[dict]:
    """One entry per patch: probability, label at the model's threshold, and ``needs_review``
    inside the band around it, where a confident-looking false negative most often hides.
    ``probabilities`` are what the predictor served (calibrated when the card's precision has
    a calibration), the scale ``info.threshold`` was chosen on."""
    low, high = review_band(info.threshold, margin)
    out = []
    for p in np.asarray(probabilities, dtype=np.float64):
        label = int(p >= info.threshold)
        out.append({"probability": float(p), "label": label,
                    "label_name": info.class_names[label],
                    "needs_review": bool(low <= p <= high)})
    return out
