"""The executable input contract: how patch bytes become model input, stored with the model.

One :class:`Preprocess` is built from the training config, travels in every checkpoint's
``meta.json`` and in the exported model's ``metadata.json`` (key ``input``), and is applied
identically by training (Ray Data decodes and pads, the worker scales), evaluation and
serving. Later steps of the contract (stain normalisation, calibration) slot in here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchray.data.records import decode_image
from patchray.data.transforms import PAD_VALUE, decode_patches, fit_to_size, normalise


class Preprocess(BaseModel):
    """Decode policy, size and padding rule, scaling and channel order of a model's input."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    size: int = Field(ge=1, description="Patch side in pixels the model takes")
    channels: Literal["RGB"] = "RGB"
    layout: Literal["NHWC"] = "NHWC"
    dtype: Literal["float32"] = "float32"
    decode_policy: Literal["strict-rgb"] = Field(
        "strict-rgb", description="PNG/JPEG, 8-bit RGB or opaque palette/RGBA; grey, CMYK, "
        "transparent and 16-bit images are refused (patchray.data.records.decode_image)")
    scale: float = Field(1.0 / 255.0, gt=0, description="pixels (uint8) * scale = model input")
    pad_value: int = Field(PAD_VALUE, ge=0, le=255,
                           description="smaller patches are padded bottom/right with this")
    pad_rule: Literal["bottom-right"] = "bottom-right"
    resize: Literal["bilinear-shrink"] = Field(
        "bilinear-shrink", description="sides longer than size are shrunk, never stretched up")
    microns_per_pixel: float | None = Field(
        None, description="Resolution the model was trained at, where the dataset says")

    def decode(self, data: bytes, *, source: str | None = None) -> np.ndarray:
        """One image's bytes -> uint8 ``size`` x ``size`` x 3 (decoded by the one policy)."""
        return fit_to_size(decode_image(data, source=source), self.size, self.pad_value)

    def pixels(self, images: Sequence[bytes], *, encoding: str = "png",
               heights: Sequence[int] | None = None,
               widths: Sequence[int] | None = None) -> np.ndarray:
        """Stored or sent patch bytes -> uint8 ``(N, size, size, 3)``."""
        return decode_patches(images, self.size, encoding=encoding, heights=heights,
                              widths=widths, pad_value=self.pad_value)

    def rows(self, rows: Sequence[dict], *, encoding: str = "png") -> np.ndarray:
        """A dataset's records (``image``, ``height``, ``width``) -> uint8 patches."""
        return self.pixels([r["image"] for r in rows], encoding=encoding,
                           heights=[r["height"] for r in rows],
                           widths=[r["width"] for r in rows])

    def to_input(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, size, size, 3)`` -> the model's float32 input."""
        if pixels.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected (N, {self.size}, {self.size}, 3) patches, "
                             f"got {pixels.shape}")
        return normalise(pixels, self.scale)

    def __call__(self, images: Sequence[bytes], **kwargs) -> np.ndarray:
        """Bytes -> model input: :meth:`pixels` then :meth:`to_input`."""
        return self.to_input(self.pixels(images, **kwargs))
