"""The executable input contract: how patch bytes become model input, stored with the model.

One :class:`Preprocess` is built from the training config, travels in every checkpoint's
``meta.json`` and in the exported model's ``metadata.json`` (key ``input``), and is applied
identically by training (Ray Data decodes and pads, the worker scales), evaluation and
serving. Stain normalisation (:class:`StainNormalisation`, fitted on the training data's
reference) is a step of the contract too: every path applies it to the uint8 pixels before
scaling (:meth:`Preprocess.to_input`), except training, whose Ray Data stage normalises
before augmenting and tells the worker so (``stain_normalised=True``).

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
from pydantic import BaseModel, ConfigDict, Field, model_validator

from patchray.data import stain as stain_ops
from patchray.data.records import decode_image
from patchray.data.transforms import PAD_VALUE, decode_patches, fit_to_size, normalise

#: The model's input names (the registry's contract, :mod:`patchray.models.registry` and
#: :mod:`patchray.models.multiscale`, tested equal): every model has ``patch``; a
#: multi-scale one also ``context``.
PATCH_INPUT = "patch"
CONTEXT_INPUT = "context"
CONTEXT_COLUMN = "context_image"  # the dataset column holding the context view


class StainNormalisation(BaseModel):
    """A fitted stain normalisation (:mod:`patchray.data.stain`): the method and the
    reference's parameters, plain floats. Macenko: ``stain_matrix`` (haematoxylin and
    eosin unit optical-density vectors, RGB) and ``max_concentrations`` (the reference's
    typical 99th-percentile concentration of each); Reinhard: l-alpha-beta ``means`` and
    ``stds`` of the reference's tissue pixels."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["macenko", "reinhard"]
    stain_matrix: list[list[float]] | None = Field(
        None, description="Macenko: [[H_r, H_g, H_b], [E_r, E_g, E_b]] unit OD vectors")
    max_concentrations: list[float] | None = Field(
        None, description="Macenko: the reference's 99th-percentile H and E concentrations")
    means: list[float] | None = Field(None, description="Reinhard: l, alpha, beta means")
    stds: list[float] | None = Field(None, description="Reinhard: l, alpha, beta std devs")
    alpha: float = Field(stain_ops.ALPHA, gt=0, lt=50, description="Macenko angle percentile")
    beta: float = Field(stain_ops.BETA, gt=0, description="OD below which a pixel is glass")
    fitted_on: str = Field("", description="What the reference was, e.g. '512 patches of "
                           "<dataset> train, seed 0'")

    @model_validator(mode="after")
    def _has_its_parameters(self) -> StainNormalisation:
        if self.method == "macenko":
            if (self.stain_matrix is None or len(self.stain_matrix) != 2
                    or any(len(v) != 3 for v in self.stain_matrix)
                    or self.max_concentrations is None or len(self.max_concentrations) != 2):
                raise ValueError("macenko needs stain_matrix (2 x 3) and max_concentrations (2)")
        elif (self.means is None or len(self.means) != 3 or self.stds is None
              or len(self.stds) != 3):
            raise ValueError("reinhard needs means (3) and stds (3)")
        return self

    @classmethod
    def fit(cls, method: str, pixels: np.ndarray, *, fitted_on: str = "") -> StainNormalisation:
        """Fit ``method`` on a reference: uint8 ``(N, H, W, 3)`` patches, pooled."""
        if method == "macenko":
            matrix, max_c = stain_ops.fit_macenko(pixels)
            return cls(method=method, stain_matrix=matrix.tolist(),
                       max_concentrations=max_c.tolist(), fitted_on=fitted_on)
        if method == "reinhard":
            means, stds = stain_ops.fit_reinhard(pixels)
            return cls(method=method, means=means.tolist(), stds=stds.tolist(),
                       fitted_on=fitted_on)
        raise ValueError(f"stain method must be macenko or reinhard, got {method!r}")

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 3)`` -> uint8, in the reference's stain (per patch)."""
        if self.method == "macenko":
            return stain_ops.macenko_normalise(pixels, np.asarray(self.stain_matrix),
                                               np.asarray(self.max_concentrations),
                                               alpha=self.alpha, beta=self.beta)
        return stain_ops.reinhard_normalise(pixels, np.asarray(self.means),
                                            np.asarray(self.stds), beta=self.beta)

    def describe(self) -> str:
        """One line for the model card."""
        if self.method == "macenko":
            h, e = ([f"{c:.3f}" for c in v] for v in self.stain_matrix or [])
            what = f"Macenko (H [{', '.join(h)}], E [{', '.join(e)}])"
        else:
            what = "Reinhard (l-alpha-beta mean/std)"
        return f"{what}, fitted on {self.fitted_on or 'an unrecorded reference'}"


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
    stain: StainNormalisation | None = Field(
        None, description="Stain normalisation applied to the uint8 pixels before scaling "
        "(both views of a multi-scale model); None: none")

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

    def normalise_stain(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 patches -> uint8 patches in the contract's stain (unchanged without one)."""
        return pixels if self.stain is None else self.stain.apply(pixels)

    def to_input(self, pixels: np.ndarray, *, stain_normalised: bool = False) -> np.ndarray:
        """uint8 ``(N, size, size, 3)`` -> the model's float32 input: stain normalisation
        (if the contract has one), then scaling. ``stain_normalised=True`` only for pixels
        that already went through :meth:`normalise_stain` (training's Ray Data stage)."""
        if pixels.shape[1:] != (self.size, self.size, 3):
            raise ValueError(f"expected (N, {self.size}, {self.size}, 3) patches, "
                             f"got {pixels.shape}")
        if not stain_normalised:
            pixels = self.normalise_stain(pixels)
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

    def inputs(self, pixels: np.ndarray, context: np.ndarray | None = None, *,
               stain_normalised: bool = False) -> Any:
        """uint8 views -> the model input: one float32 array, or for a multi-scale
        contract ``{"patch": ..., "context": ...}`` (the names the IR's inputs carry).
        ``stain_normalised``: see :meth:`to_input` (both views)."""
        done = {"stain_normalised": stain_normalised}
        if not self.multiscale:
            if context is not None:
                raise ValueError("this contract has one input (patch); got a context view too")
            return self.to_input(pixels, **done)
        if context is None:
            raise ValueError(f"this contract has two inputs (patch, context at "
                             f"{self.context_scale:g}x); got no context view")
        if len(context) != len(pixels):
            raise ValueError(f"{len(pixels)} patches but {len(context)} context views")
        return {PATCH_INPUT: self.to_input(pixels, **done),
                CONTEXT_INPUT: self.to_input(context, **done)}

    def row_inputs(self, rows: Sequence[dict], *, encoding: str = "png") -> Any:
        """A dataset's records -> the model input (:meth:`inputs`), both views when the
        contract is multi-scale."""
        context = self.context_rows(rows, encoding=encoding) if self.multiscale else None
        return self.inputs(self.rows(rows, encoding=encoding), context)

    def __call__(self, images: Sequence[bytes], **kwargs) -> np.ndarray:
        """Bytes -> model input: :meth:`pixels` then :meth:`to_input`."""
        return self.to_input(self.pixels(images, **kwargs))
