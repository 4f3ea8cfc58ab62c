"""Scoring slide tiles with a registered OpenVINO model: pixels -> the model's inputs -> p.

Plain code, no Ray import: :class:`SlideScorer` is the callable class
:mod:`patchray.slides.jobs` hands to ``ray.data.Dataset.map_batches``, and it is tested
without Ray. No TensorFlow anywhere on this path (tested).

Rows are tiles: ``slide`` (an index into the job's slide list), ``x``, ``y`` (level 0).
:func:`read_batch` is the one place pixels are read and turned into model input, with the
card's contract (:meth:`Preprocess.to_input`: the size, scale and padding serving uses). For
a multi-scale model (``contract.context_scale``) it also reads each tile's context view
(:func:`patchray.slides.multiscale.read_context_tiles`); ``context`` is None otherwise.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from patchray.slides.tiling import Tile, read_tiles


@dataclass(frozen=True)
class BatchInputs:
    """What the model takes for one batch: ``x`` (float32 NHWC, the contract's) and, for a
    multi-scale model, ``context`` (the second view), else None."""

    x: np.ndarray
    context: np.ndarray | None = None


class ReaderCache:
    """Open slide readers by path, at most ``size`` at once (least recently used closed).
    One per scoring actor: readers hold files and are never pickled."""

    def __init__(self, backend: str = "auto", size: int = 4) -> None:
        self.backend, self.size = backend, size
        self._open: OrderedDict[str, Any] = OrderedDict()

    def get(self, path: str) -> Any:
        from patchray.slides.reader import open_slide

        reader = self._open.pop(path, None) or open_slide(path, backend=self.backend)  # type: ignore[arg-type]
        self._open[path] = reader
        while len(self._open) > self.size:
            self._open.popitem(last=False)[1].close()
        return reader

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()


def batch_tiles(batch: Mapping[str, np.ndarray], slides: Sequence[Mapping[str, Any]]) -> list[Tile]:
    """A batch's rows -> :class:`Tile` with their slide's geometry."""
    tiles = []
    for s, x, y in zip(batch["slide"].tolist(), batch["x"].tolist(), batch["y"].tolist()):
        g = slides[s]
        tiles.append(Tile(g["slide_id"], g["slide_id"], g["level"], x, y, g["read_size"],
                          g["patch_size"], g["side0"], g["mpp"], 0.0, None, None))
    return tiles


def read_batch(readers: ReaderCache, batch: Mapping[str, np.ndarray],
               slides: Sequence[Mapping[str, Any]], contract: Any) -> BatchInputs:
    """A batch of tile rows -> the model's inputs: pixels read per slide (neighbours
    together, :func:`read_tiles`), in row order, then ``contract.to_input``."""
    tiles = batch_tiles(batch, slides)
    pixels = np.empty((len(tiles), contract.size, contract.size, 3), dtype=np.uint8)
    order = np.asarray(batch["slide"])
    for s in dict.fromkeys(order.tolist()):
        where = np.flatnonzero(order == s)
        pixels[where] = read_tiles(readers.get(slides[s]["path"]), [tiles[i] for i in where])
    if not contract.multiscale:
        return BatchInputs(contract.to_input(pixels))
    from patchray.slides.multiscale import read_context_tiles

    context = np.empty_like(pixels)
    for s in dict.fromkeys(order.tolist()):
        where = np.flatnonzero(order == s)
        context[where] = read_context_tiles(readers.get(slides[s]["path"]),
                                            [tiles[i] for i in where], contract.context_scale,
                                            contract.size)
    return BatchInputs(contract.to_input(pixels), contract.to_input(context))


def predict_inputs(predictor: Any, inputs: BatchInputs) -> np.ndarray:
    """Probabilities for one batch (a second view goes to the predictor as ``context``)."""
    if inputs.context is None:
        return predictor.predict_arrays(inputs.x)
    return predictor.predict_arrays(inputs.x, context=inputs.context)


class SlideScorer:
    """``map_batches`` callable: tile rows -> ``slide``, ``x``, ``y``, ``probability``.

    Built once per actor from picklable arguments: the slides' paths and geometry, the
    registered model's folder and precision; readers are opened here, lazily, per slide."""

    def __init__(self, slides: Sequence[Mapping[str, Any]], model_dir: str, *,
                 precision: str = "auto", backend: str = "auto",
                 num_threads: int | None = None) -> None:
        from patchray.inference.predictor import PatchPredictor

        self.slides = list(slides)
        self.predictor = PatchPredictor.from_card(model_dir, precision=precision,
                                                  num_threads=num_threads)
        self.contract = self.predictor.preprocess
        self.readers = ReaderCache(backend)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        inputs = read_batch(self.readers, batch, self.slides, self.contract)
        return {"slide": np.asarray(batch["slide"]), "x": np.asarray(batch["x"]),
                "y": np.asarray(batch["y"]),
                "probability": predict_inputs(self.predictor, inputs)}
