"""The executable input contract: how patch bytes become model input, stored with the model.

One :class:`Preprocess` is built from the training config, travels in every checkpoint's
``meta.json`` and in the exported model's ``metadata.json`` (key ``input``), and is applied
identically by training (Ray Data decodes and pads, the worker scales), evaluation and
serving. Later steps of the contract (stain normalisation, calibration) slot in here.

A multi-scale model (``context_scale`` set) takes two inputs, named :data:`PATCH_INPUT` and
:data:`CONTEXT_INPUT`: the patch, and the window with the same centre covering
``context_scale`` times its side, shrunk to the same ``size``
(:func:`patchray.slides.multiscale.read_views`); both go through the same decoding and
scaling. Its model input is then a dict ``{"patch": x, "context": c}`` (:meth:`inputs`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from patchray.data.records import decode_image
from patchray.data.transforms import PAD_VALUE, decode_patches, fit_to_size, normalise

#: The model's input names (the registry's contract, :mod:`patchray.models.registry` and
#: :mod:`patchray.models.multiscale`, tested equal): every model has ``patch``; a
#: multi-scale one also ``context``.
PATCH_INPUT = "patch"
CONTEXT_INPUT = "context"
CONTEXT_COLUMN = "context_image"  # the dataset column holding the context view


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
    context_scale: float | None = Field(
        None, gt=1.0, description="Multi-scale models only: the model has a second input "
        "'context', the window with the patch's centre covering context_scale times its "
        "side (level-0 pixels), shrunk to size; None: one input, 'patch'")

    @property
    def multiscale(self) -> bool:
        return self.context_scale is not None

    @property
    def input_names(self) -> tuple[str, ...]:
        """The model's inputs, in order: ``("patch",)`` or ``("patch", "context")``."""
        return (PATCH_INPUT, CONTEXT_INPUT) if self.multiscale else (PATCH_INPUT,)

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

    def context_rows(self, rows: Sequence[dict], *, encoding: str = "png") -> np.ndarray:
        """A multi-scale dataset's records -> uint8 context views (``context_image``; the
        same native size as ``image``)."""
        missing = [i for i, r in enumerate(rows) if r.get(CONTEXT_COLUMN) is None]
        if missing:
            raise ValueError(f"this model takes a context view, but {len(missing)} of "
                             f"{len(rows)} records have no {CONTEXT_COLUMN!r} (is the dataset "
                             "multi-scale? patchray.slides.multiscale writes one)")
        return self.pixels([r[CONTEXT_COLUMN] for r in rows], encoding=encoding,
                           heights=[r["height"] for r in rows],
                           widths=[r["width"] for r in rows])

    def inputs(self, pixels: np.ndarray, context: np.ndarray | None = None) -> Any:
        """uint8 views -> the model input: one float32 array, or for a multi-scale
        contract ``{"patch": ..., "context": ...}`` (the names the IR's inputs carry)."""
        if not self.multiscale:
            if context is not None:
                raise ValueError("this contract has one input (patch); got a context view too")
            return self.to_input(pixels)
        if context is None:
            raise ValueError(f"this contract has two inputs (patch, context at "
                             f"{self.context_scale:g}x); got no context view")
        if len(context) != len(pixels):
            raise ValueError(f"{len(pixels)} patches but {len(context)} context views")
        return {PATCH_INPUT: self.to_input(pixels), CONTEXT_INPUT: self.to_input(context)}

    def row_inputs(self, rows: Sequence[dict], *, encoding: str = "png") -> Any:
        """A dataset's records -> the model input (:meth:`inputs`), both views when the
        contract is multi-scale."""
        context = self.context_rows(rows, encoding=encoding) if self.multiscale else None
        return self.inputs(self.rows(rows, encoding=encoding), context)

    def __call__(self, images: Sequence[bytes], **kwargs) -> np.ndarray:
        """Bytes -> model input: :meth:`pixels` then :meth:`to_input`."""
        return self.to_input(self.pixels(images, **kwargs))
