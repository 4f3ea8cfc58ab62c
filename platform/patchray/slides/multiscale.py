"""Two views of one tile for multi-scale models: the patch and its context, concentric.

The **patch** is the tile as :func:`~patchray.slides.tiling.read_tile` reads it. The
**context** is the window with the same centre covering ``context_scale`` times the tile's
side in level-0 pixels (default 4: 0.5 um/px patches get 2 um/px context), read at the
coarsest level that is still at least as fine as needed and shrunk to the same ``size``
(never enlarged). Pixels outside the slide read as white, as everywhere in
:mod:`patchray.slides`. Plain functions, no Ray, no TensorFlow::

    with open_slide("slide.tif") as slide:
        tiling = tile_slide(slide, TilingConfig(patch_size=96, target_mpp=0.5), patient_id="p01")
        patch, context = read_views(slide, tiling.tiles[0], context_scale=4, size=96)
        contexts = read_context_tiles(slide, tiling.tiles, context_scale=4, size=96)

and the dataset builder, which writes the usual patchray Parquet layout (through
:func:`patchray.data.ingest.ingest_source`: split by patient, duplicate checks, report,
manifest) with one more column, ``context_image`` (the same encoding as ``image``), and the
manifest's ``context_scale``::

    write_multiscale_dataset(["p01.tif", "p02.tif", "p03.tif"], "data/ms",
                             tiling=TilingConfig(patch_size=96, target_mpp=0.5),
                             context_scale=4, masks="masks/", patients="patients.csv")

Models trained on it take two inputs, ``patch`` and ``context``
(:mod:`patchray.models.multiscale`); the contract records ``context_scale``
(:class:`patchray.inference.preprocess.Preprocess`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from patchray.errors import ConfigError, DataError
from patchray.slides.reader import SlideReader
from patchray.slides.tiling import Tile, read_tile, read_tiles

DEFAULT_CONTEXT_SCALE = 4.0
CONTEXT_COLUMN = "context_image"


def check_context_scale(context_scale: float, *, where: str = "context_scale") -> float:
    if isinstance(context_scale, bool) or not isinstance(context_scale, int | float) \
            or not context_scale > 1.0:
        raise ConfigError(f"{where}={context_scale!r}: expected a number > 1 (how many times "
                          "the patch's field of view the context covers, e.g. 4)")
    return float(context_scale)


def context_tile(reader: SlideReader, tile: Tile, context_scale: float, size: int) -> Tile:
    """The :class:`Tile` of ``tile``'s context: the same centre, ``context_scale`` times its
    level-0 side, at the coarsest level whose pixels are no larger than the context needs
    (so it is shrunk to ``size``, never enlarged)."""
    context_scale = check_context_scale(context_scale)
    side0 = tile.side0 * context_scale
    needed = side0 / size  # level-0 pixels per context pixel
    downsamples = reader.level_downsamples
    fine_enough = [i for i, ds in enumerate(downsamples) if ds <= needed * (1 + 1e-6)]
    level = max(fine_enough, key=lambda i: downsamples[i]) if fine_enough else 0
    ds = downsamples[level]
    read_size = max(size, round(side0 / ds))
    side0 = round(read_size * ds)
    cx, cy = tile.x + tile.side0 / 2, tile.y + tile.side0 / 2
    mpp = None if tile.mpp is None else tile.mpp * side0 / tile.side0
    return dataclasses.replace(tile, level=level, x=round(cx - side0 / 2), y=round(cy - side0 / 2),
                               read_size=read_size, patch_size=size, side0=side0, mpp=mpp)


def read_views(reader: SlideReader, tile: Tile, context_scale: float = DEFAULT_CONTEXT_SCALE,
               size: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(patch, context)``, each ``(size, size, 3)`` uint8 (``size``: the tile's
    patch_size); see the module docstring for the geometry."""
    size = size or tile.patch_size
    if size != tile.patch_size:
        raise DataError(f"read_views: size {size} differs from the tile's patch_size "
                        f"{tile.patch_size}; tile with patch_size={size}")
    return read_tile(reader, tile), read_tile(reader, context_tile(reader, tile,
                                                                   context_scale, size))


def read_context_tiles(reader: SlideReader, tiles: Sequence[Tile],
                       context_scale: float = DEFAULT_CONTEXT_SCALE,
                       size: int | None = None) -> np.ndarray:
    """The context views of many tiles of one slide, ``(N, size, size, 3)`` uint8, in order:
    what ``slide predict`` feeds a multi-scale model's ``context`` input beside
    :func:`~patchray.slides.tiling.read_tiles` for ``patch``. Neighbours are read together."""
    if not tiles:
        s = size or 0
        return np.zeros((0, s, s, 3), dtype=np.uint8)
    size = size or tiles[0].patch_size
    return read_tiles(reader, [context_tile(reader, t, context_scale, size) for t in tiles])


# --------------------------------------------------------------------------- the dataset


@dataclass
class MultiScaleSource:
    """A :class:`~patchray.data.sources.SlideSource` whose records carry a second view.

    Scanning (tissue, grid, centre labels) is the slide source's own; reading gives both
    views of each tile (:meth:`read_views`), which :func:`patchray.data.ingest.ingest_source`
    writes as ``image`` and ``context_image``."""

    base: Any  # patchray.data.sources.SlideSource
    context_scale: float = DEFAULT_CONTEXT_SCALE

    def __post_init__(self) -> None:
        self.context_scale = check_context_scale(self.context_scale)

    # The PatchSource protocol, delegated.
    @property
    def kind(self) -> str:
        return "multiscale-slides"

    @property
    def root(self) -> Path:
        return self.base.root

    @property
    def nominal_size(self) -> tuple[int, int]:
        return self.base.nominal_size

    @property
    def class_names(self) -> dict[str, str]:
        return self.base.class_names

    @property
    def official_splits(self) -> bool:
        return False

    @property
    def view_columns(self) -> tuple[str, ...]:
        """The extra image columns this source's records carry (ingest reads this)."""
        return (CONTEXT_COLUMN,)

    def scan(self) -> Any:
        return self.base.scan()

    def read_pixels(self, candidates: Iterable[Any]) -> Iterator[Any]:
        return self.base.read_pixels(candidates)

    def read_views(self, candidates: Iterable[Any]) -> Iterator[tuple[Any, Any, dict, Any]]:
        """``(candidate, patch, {"context_image": context}, reason)`` per candidate: the
        main view from the slide source, the context read beside it, one reader per slide."""
        from itertools import groupby

        from patchray.slides.reader import open_slide

        size = self.base.config.patch_size
        for path, run in groupby(candidates, key=lambda c: c.path):
            run = list(run)
            loaded = list(self.base.read_pixels(run))
            g = self.base.geometry[str(path)]
            tiles = [Tile(c.slide_id, c.patient_id, g["level"], c.x, c.y, g["read_size"],
                          g["patch_size"], g["side0"], g["mpp"], 0.0, c.label, None) for c in run]
            try:
                with open_slide(path, backend=self.base.backend) as reader:  # type: ignore[arg-type]
                    contexts = read_context_tiles(reader, tiles, self.context_scale, size)
            except DataError as e:
                for cand, *_ in loaded:
                    yield cand, None, {}, str(e)
                continue
            for (cand, pixels, reason), context in zip(loaded, contexts, strict=True):
                if pixels is None:
                    yield cand, None, {}, reason
                else:
                    yield cand, pixels, {CONTEXT_COLUMN: context}, None

    def describe(self) -> dict[str, Any]:
        return {**self.base.describe(), "kind": self.kind, "context_scale": self.context_scale,
                "views": {"image": "the tile", CONTEXT_COLUMN: (
                    f"the same centre, {self.context_scale:g}x the tile's side, shrunk to "
                    f"{self.base.config.patch_size} px")}}


def write_multiscale_dataset(
    slides: Sequence[str | Path] | Sequence[Any], out_uri: str, *, tiling: Any = None,
    context_scale: float = DEFAULT_CONTEXT_SCALE, patients: str | Path | None = None,
    masks: str | Path | None = None, missing_mask: str = "error", train: float = 0.6,
    val: float = 0.2, seed: int = 0, split_map: Mapping[str, str] | None = None,
    rows_per_file: int = 2000, encoding: str = "png", workers: int = 1, backend: str = "auto",
    thumbnails: str | None = None, on_ray: bool = False,
) -> Any:
    """Tile ``slides`` and write both views of every tile to ``out_uri`` as a patchray
    dataset; returns :class:`~patchray.data.ingest.IngestResult`.

    ``slides``: slide files (patients from the ``patients`` table, else each slide its own
    patient; tumour masks found in the ``masks`` folder, labels by the centre rule), or
    ready :class:`~patchray.slides.inputs.SlideInput`. Split by patient like ingest
    (``train``/``val``/``seed`` or ``split_map``). ``workers`` processes read pixels;
    ``on_ray``: every slide is scanned in its own Ray task (needs a running Ray)."""
    from patchray.config import TilingConfig
    from patchray.data.ingest import ingest_source
    from patchray.data.sources import SlideSource
    from patchray.slides.inputs import SlideInput, resolve_slide_inputs

    tiling = tiling if tiling is not None else TilingConfig()
    if all(isinstance(s, SlideInput) for s in slides) and slides:
        inputs = list(slides)
    else:
        inputs = resolve_slide_inputs(list(slides), patients=patients, masks=masks,
                                      missing_mask=missing_mask)
    scan_all = None
    if on_ray:
        from patchray.slides.jobs import ray_scan_all

        scan_all = ray_scan_all
    base = SlideSource(inputs, tiling, backend=backend, thumbnails=thumbnails,
                       scan_all=scan_all)
    source = MultiScaleSource(base, context_scale)
    return ingest_source(source, out_uri, train=train, val=val, seed=seed,
                         rows_per_file=rows_per_file, split_map=split_map, encoding=encoding,
                         workers=workers)
