"""Tissue masks, sliding-window tiling and centre-region labels for whole slides.

Plain functions over a :class:`~patchray.slides.reader.SlideReader`, no Ray::

    with open_slide("slide.tif") as slide:
        tumour = mask_from_polygons(polygons, slide.dimensions)       # or mask_from_image(...)
        tiling = tile_slide(slide, TilingConfig(patch_size=96, target_mpp=0.5),
                            patient_id="p01", tumour_mask=tumour)
        tiling.count, tiling.positives                                # what was kept
        tiling.thumbnail(slide).save("p01-tiles.png")                 # the grid, drawn
        pixels = read_tile(slide, tiling.tiles[0])                    # (96, 96, 3) uint8

Steps, each a function of its own:

1. :func:`compute_tissue_mask`: Otsu's threshold on HSV saturation of a low-resolution level
   (stained tissue is saturated, glass is white or grey), never below
   ``tissue.min_saturation`` so an all-background slide gives an empty mask, not noise.
2. :func:`resolve_geometry`: which level is read and how large a window, from
   ``level`` or ``target_mpp``. A level within ``mpp_tolerance`` of the target is read as
   is; otherwise the nearest finer level is read and shrunk (never enlarged).
3. :func:`grid_positions`: the sliding window in level-0 coordinates (``stride`` in patch
   pixels; ``include_edges`` adds windows that run off the slide, read as white).
4. Each window is kept when at least ``min_tissue_fraction`` of it is tissue, and labelled
   with :func:`centre_label` when a tumour mask is given (else ``label`` is None).

Masks are :class:`RegionMask`: a boolean array at any resolution with its scale to level 0,
summed once (an integral image) so each window costs O(1). A window maps outward onto mask
pixels (floor of its start, ceiling of its end): with a mask coarser than the window's
centre region, "contains tumour" is generous by up to one mask pixel on each side.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw
from pydantic import ValidationError

# The options live with every other typed job config (patchray.config), so slide job specs
# nest them without an import cycle; they are re-exported here, where they are used.
from patchray.config import (
    DEFAULT_CENTRE_FRACTION, TilingConfig, TissueMaskConfig, explain_validation_error,
)
from patchray.errors import ConfigError, DataError
from patchray.slides.reader import SlideReader

Polygon = Sequence[tuple[float, float]]  # (x, y) vertices in level-0 pixels


# --------------------------------------------------------------------------- options


def parse_tiling_config(doc: Mapping[str, Any] | None = None, *,
                        source: str = "tiling options") -> TilingConfig:
    """Validate tiling options from a mapping (a spec's ``tiling`` section, CLI flags);
    ConfigError names each bad field, the value given and, for unknown keys, close matches."""
    try:
        return TilingConfig.model_validate(dict(doc or {}))
    except ValidationError as e:
        raise ConfigError(explain_validation_error(e, TilingConfig, source)) from None


# --------------------------------------------------------------------------- masks


@dataclass(frozen=True)
class RegionMask:
    """A boolean mask over a slide at any resolution, answering "what fraction of this
    level-0 rectangle is set" in O(1) from its integral image."""

    mask: np.ndarray  # (height, width) bool
    scale: tuple[float, float]  # level-0 pixels per mask pixel, (x, y)
    integral: np.ndarray  # (height + 1, width + 1) int64

    @classmethod
    def from_array(cls, mask: np.ndarray, dimensions: tuple[int, int], *,
                   where: str = "mask") -> RegionMask:
        """``mask`` covers a slide of level-0 ``dimensions`` (width, height) at any
        resolution with the slide's aspect ratio."""
        mask = np.asarray(mask)
        if mask.ndim != 2 or 0 in mask.shape:
            raise DataError(f"{where}: expected a 2-D mask, got shape {mask.shape}")
        h, w = mask.shape
        sx, sy = dimensions[0] / w, dimensions[1] / h
        if not 0.95 <= sx / sy <= 1.05:
            raise DataError(
                f"{where}: a {w}x{h} mask does not have the aspect ratio of the "
                f"{dimensions[0]}x{dimensions[1]} slide (scales {sx:.3g} and {sy:.3g})")
        mask = mask.astype(bool)
        integral = np.zeros((h + 1, w + 1), dtype=np.int64)
        np.cumsum(np.cumsum(mask, axis=0), axis=1, out=integral[1:, 1:])
        return cls(mask, (sx, sy), integral)

    def fraction(self, x0: float, y0: float, width0: float, height0: float) -> float:
        """Fraction of mask pixels set under a level-0 rectangle (outside counts as unset)."""
        h, w = self.mask.shape
        sx, sy = self.scale
        c0, r0 = math.floor(x0 / sx), math.floor(y0 / sy)
        c1, r1 = math.ceil((x0 + width0) / sx), math.ceil((y0 + height0) / sy)
        area = (c1 - c0) * (r1 - r0)
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if area <= 0 or c0 >= c1 or r0 >= r1:
            return 0.0
        ii = self.integral
        count = ii[r1, c1] - ii[r0, c1] - ii[r1, c0] + ii[r0, c0]
        return float(count) / area


@dataclass(frozen=True)
class TissueMask(RegionMask):
    """The tissue mask of one slide and how it was made."""

    level: int = 0
    threshold: float = 0.0  # the saturation threshold applied


def compute_tissue_mask(reader: SlideReader, config: TissueMaskConfig | None = None) -> TissueMask:
    """Tissue where HSV saturation exceeds max(Otsu's threshold, ``min_saturation``), at
    ``config.level`` (default: the slide's lowest-resolution level)."""
    from skimage.color import rgb2hsv
    from skimage.filters import threshold_otsu

    config = config or TissueMaskConfig()
    level = reader.level_count - 1 if config.level is None else config.level
    if level >= reader.level_count:
        raise ConfigError(f"tiling.tissue.level={level}: {reader.path} has levels 0.."
                          f"{reader.level_count - 1} ({reader.describe_levels()})")
    rgb = reader.read_level(level, max_pixels=config.max_pixels)
    saturation = rgb2hsv(rgb)[..., 1]
    # Otsu needs two populations; a uniform image (all glass) has one.
    otsu = float(threshold_otsu(saturation)) if np.ptp(saturation) > 1e-6 else 1.0
    threshold = max(otsu, config.min_saturation)
    base = RegionMask.from_array(saturation > threshold, reader.dimensions,
                                 where=f"{reader.path} tissue mask")
    return TissueMask(base.mask, base.scale, base.integral, level=level, threshold=threshold)


def rasterize_polygons(polygons: Sequence[Polygon], dimensions: tuple[int, int], *,
                       downsample: float = 1.0) -> np.ndarray:
    """Polygons in level-0 pixels -> a bool mask of the slide at ``downsample``
    (PIL's polygon fill, edges included)."""
    if downsample <= 0:
        raise DataError(f"downsample {downsample}: expected > 0")
    w, h = (max(1, round(d / downsample)) for d in dimensions)
    img = Image.new("1", (w, h), 0)
    draw = ImageDraw.Draw(img)
    for i, polygon in enumerate(polygons):
        if len(polygon) < 3:
            raise DataError(f"polygon {i}: {len(polygon)} vertices; expected at least 3")
        draw.polygon([(x / downsample, y / downsample) for x, y in polygon], fill=1)
    return np.asarray(img, dtype=bool)


def mask_from_polygons(polygons: Sequence[Polygon], dimensions: tuple[int, int], *,
                       downsample: float = 1.0) -> RegionMask:
    """A :class:`RegionMask` from annotation polygons (level-0 pixels)."""
    return RegionMask.from_array(rasterize_polygons(polygons, dimensions, downsample=downsample),
                                 dimensions, where="tumour polygons")


def mask_from_image(image: str | Path | np.ndarray, dimensions: tuple[int, int]) -> RegionMask:
    """A :class:`RegionMask` from a mask image (a file PIL reads, or an array): any
    non-zero pixel is set. Its resolution is inferred from ``dimensions`` (level 0)."""
    where = str(image) if isinstance(image, str | Path) else "mask array"
    if isinstance(image, str | Path):
        try:
            with Image.open(image) as img:
                image = np.asarray(img.convert("L"))
        except OSError as e:
            raise DataError(f"{where}: not a readable mask image ({e})") from e
    arr = np.asarray(image)
    if arr.ndim == 3:
        arr = arr.max(axis=2)
    return RegionMask.from_array(arr != 0, dimensions, where=where)


def read_polygons_geojson(path: str | Path) -> list[list[tuple[float, float]]]:
    """The outer rings of every Polygon / MultiPolygon in a GeoJSON file (level-0 pixels,
    the layout QuPath exports and :mod:`patchray.slides.synthetic` writes)."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: not a readable GeoJSON file ({e})") from e
    features = doc.get("features", [doc]) if isinstance(doc, dict) else doc
    polygons: list[list[tuple[float, float]]] = []
    for feature in features:
        geometry = feature.get("geometry", feature) if isinstance(feature, dict) else None
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        if kind == "Polygon":
            rings = [geometry["coordinates"][0]]
        elif kind == "MultiPolygon":
            rings = [poly[0] for poly in geometry["coordinates"]]
        else:
            raise DataError(f"{path}: expected Polygon or MultiPolygon geometries, got {kind!r}")
        polygons += [[(float(x), float(y)) for x, y, *_ in ring] for ring in rings]
    return polygons


# --------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """Where and how big a window is read, resolved for one slide."""

    level: int  # the level read
    read_size: int  # window side at that level, in its pixels
    patch_size: int  # side of the patch handed on (read_size shrunk to it when larger)
    side0: int  # window side in level-0 pixels
    stride0: int  # step between windows in level-0 pixels
    mpp: float | None  # microns per pixel of the patch handed on


def resolve_geometry(reader: SlideReader, config: TilingConfig) -> Geometry:
    """The level and window for ``config`` on this slide; ConfigError names the option a
    slide cannot satisfy (a missing level, a target_mpp without mpp or finer than level 0)."""
    if config.target_mpp is None:
        level = config.level or 0
        if level >= reader.level_count:
            raise ConfigError(f"tiling.level={level}: {reader.path} has levels 0.."
                              f"{reader.level_count - 1} ({reader.describe_levels()})")
        read_size = config.patch_size
        mpp = reader.level_mpp(level)
    else:
        level, read_size, mpp = _level_for_mpp(reader, config)
    ds = reader.level_downsamples[level]
    stride_at_level = config.step * read_size / config.patch_size
    return Geometry(level=level, read_size=read_size, patch_size=config.patch_size,
                    side0=max(1, round(read_size * ds)),
                    stride0=max(1, round(stride_at_level * ds)), mpp=mpp)


def _level_for_mpp(reader: SlideReader, config: TilingConfig) -> tuple[int, int, float]:
    target, tol = float(config.target_mpp or 0.0), config.mpp_tolerance
    if reader.mpp is None:
        raise ConfigError(f"tiling.target_mpp={target}: {reader.path} does not state its "
                          "microns per pixel; choose tiling.level instead")
    mpps = [reader.level_mpp(i) or 0.0 for i in range(reader.level_count)]
    close = [i for i, m in enumerate(mpps) if abs(m - target) <= tol * target]
    if close:  # read as is: the nearest level within the tolerance
        level = min(close, key=lambda i: abs(mpps[i] - target))
        return level, config.patch_size, mpps[level]
    finer = [i for i, m in enumerate(mpps) if m < target]
    if not finer:
        raise ConfigError(
            f"tiling.target_mpp={target}: finer than the slide's level 0 ({mpps[0]:.4g} "
            f"microns per pixel) beyond mpp_tolerance={tol}; patches are never enlarged: "
            f"expected target_mpp >= {mpps[0] * (1 - tol):.4g}")
    level = max(finer, key=lambda i: mpps[i])  # the coarsest level still finer than asked
    read_size = round(config.patch_size * target / mpps[level])
    return level, read_size, read_size * mpps[level] / config.patch_size


def grid_positions(dimensions: tuple[int, int], side0: int, stride0: int, *,
                   include_edges: bool = False) -> Iterator[tuple[int, int]]:
    """Top-left (x, y) of each window in level-0 pixels, row by row. Without
    ``include_edges`` only windows wholly inside the slide."""
    w, h = dimensions
    last_x, last_y = (w - 1, h - 1) if include_edges else (w - side0, h - side0)
    for y in range(0, last_y + 1, stride0):
        for x in range(0, last_x + 1, stride0):
            yield x, y


def centre_box(x: int, y: int, side0: int, centre_fraction: float) -> tuple[float, float, float]:
    """(x, y, side) of a window's centred labelling region, in level-0 pixels."""
    side = side0 * centre_fraction
    offset = (side0 - side) / 2
    return x + offset, y + offset, side


def centre_label(tumour: RegionMask, x: int, y: int, side0: int, *,
                 centre_fraction: float = DEFAULT_CENTRE_FRACTION,
                 min_centre_tumour: float = 0.0) -> tuple[int, float]:
    """(label, tumour fraction of the centre region) of a window at level-0 (x, y).

    The label is 1 when tumour covers more than ``min_centre_tumour`` of the centred square
    whose side is ``centre_fraction`` of the window's: by default any tumour pixel in the
    50-pixel centre of an 80-pixel window (centre_fraction 50/80 = 0.625), the rule issue
    13 sets. Tumour only in the outer ring (a corner touching a tumour) leaves it 0, so a
    patch is labelled by what lies under its middle, where the model looks hardest.
    """
    cx, cy, side = centre_box(x, y, side0, centre_fraction)
    fraction = tumour.fraction(cx, cy, side, side)
    return int(fraction > min_centre_tumour), fraction


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True, slots=True)
class Tile:
    """One kept window: where to read it and what it is. ``x, y`` are level-0 pixels (the
    PATCH_SCHEMA's ``x``/``y``); ``label`` is None without a tumour mask."""

    slide_id: str
    patient_id: str
    level: int
    x: int
    y: int
    read_size: int  # side read at ``level``
    patch_size: int  # side handed on
    side0: int  # side in level-0 pixels
    mpp: float | None
    tissue_fraction: float
    label: int | None
    tumour_fraction: float | None  # of the centre region, with a mask

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def source(self) -> str:
        """What an ingest record's ``source`` column would say."""
        return f"{self.slide_id}@L{self.level}[x={self.x},y={self.y}]"


@dataclass(frozen=True)
class SlideTiling:
    """The tiles of one slide, with what produced them (for the thumbnail and the report)."""

    slide_id: str
    patient_id: str
    config: TilingConfig
    geometry: Geometry
    tissue: TissueMask
    tiles: tuple[Tile, ...]
    windows: int  # grid positions considered, kept or not

    @property
    def count(self) -> int:
        return len(self.tiles)

    @property
    def positives(self) -> int | None:
        """Tiles labelled tumour; None when the slide had no tumour mask."""
        if self.tiles and self.tiles[0].label is None:
            return None
        return sum(t.label or 0 for t in self.tiles)

    def summary(self) -> str:
        tumour = "" if self.positives is None else f", {self.positives} tumour"
        return (f"{self.slide_id}: {self.count} tiles{tumour} of {self.windows} windows "
                f"({self.geometry.patch_size} px at level {self.geometry.level}"
                + (f", {self.geometry.mpp:.3g} um/px)" if self.geometry.mpp else ")"))

    def thumbnail(self, reader: SlideReader, *, max_side: int = 1024) -> Image.Image:
        """A thumbnail at most ``max_side`` pixels wide or high (:func:`draw_tiles`), with
        every kept tile outlined (red: tumour, green: benign, blue: unlabelled) and the
        counts written on top."""
        return draw_tiles(reader, self.tiles, max_side=max_side, caption=self.summary())


def tile_slide(reader: SlideReader, config: TilingConfig | None = None, *, patient_id: str,
               slide_id: str | None = None, tumour_mask: RegionMask | None = None,
               tissue: TissueMask | None = None) -> SlideTiling:
    """Tile one slide: tissue mask, sliding window, tissue filter, centre labels.

    ``patient_id`` is required: splits are by patient, and a slide id is not one (a patient
    may have several slides). ``slide_id`` defaults to the file name without suffix.
    """
    config = config or TilingConfig()
    slide_id = slide_id or reader.path.name.split(".")[0]
    geometry = resolve_geometry(reader, config)
    tissue = tissue or compute_tissue_mask(reader, config.tissue)
    tiles = []
    windows = 0
    side0 = geometry.side0
    for x, y in grid_positions(reader.dimensions, side0, geometry.stride0,
                               include_edges=config.include_edges):
        windows += 1
        tissue_fraction = tissue.fraction(x, y, side0, side0)
        # A small epsilon: a fraction computed as 0.4999999 of a half-tissue window is 0.5.
        if tissue_fraction + 1e-9 < config.min_tissue_fraction or tissue_fraction == 0:
            continue
        label = tumour_fraction = None
        if tumour_mask is not None:
            label, tumour_fraction = centre_label(
                tumour_mask, x, y, side0, centre_fraction=config.centre_fraction,
                min_centre_tumour=config.min_centre_tumour)
        tiles.append(Tile(slide_id=slide_id, patient_id=patient_id, level=geometry.level,
                          x=x, y=y, read_size=geometry.read_size,
                          patch_size=geometry.patch_size, side0=side0, mpp=geometry.mpp,
                          tissue_fraction=round(tissue_fraction, 4), label=label,
                          tumour_fraction=None if tumour_fraction is None
                          else round(tumour_fraction, 4)))
    return SlideTiling(slide_id, patient_id, config, geometry, tissue, tuple(tiles), windows)


def read_tile(reader: SlideReader, tile: Tile) -> np.ndarray:
    """A tile's pixels, ``(patch_size, patch_size, 3)`` uint8 (shrunk from ``read_size``
    with a box filter when the level was finer than the target)."""
    pixels = reader.read_region(tile.level, tile.x, tile.y, tile.read_size, tile.read_size)
    if tile.read_size == tile.patch_size:
        return pixels
    img = Image.fromarray(pixels).resize((tile.patch_size, tile.patch_size), Image.Resampling.BOX)
    return np.asarray(img)


# --------------------------------------------------------------------------- pictures

TILE_COLOURS = {1: (220, 30, 30), 0: (20, 160, 60), None: (30, 90, 220)}


def draw_tiles(reader: SlideReader, tiles: Sequence[Tile], *, level: int | None = None,
               max_side: int = 1024, caption: str | None = None) -> Image.Image:
    """A thumbnail of ``level`` with ``tiles`` outlined, at most ``max_side`` pixels a side.
    Default level: the lowest resolution that is still at least ``max_side`` on its longer
    side (else level 0), so the picture is shrunk, never enlarged."""
    if level is None:
        big = [i for i, (w, h) in enumerate(reader.level_dimensions) if max(w, h) >= max_side]
        level = big[-1] if big else 0
    level = reader.check_level(level)
    img = Image.fromarray(reader.read_level(level))
    scale = min(1.0, max_side / max(img.size))
    if scale < 1.0:
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.BOX)
    sx = img.width / reader.dimensions[0]  # thumbnail pixels per level-0 pixel
    sy = img.height / reader.dimensions[1]
    draw = ImageDraw.Draw(img)
    for t in tiles:
        box = (t.x * sx, t.y * sy, (t.x + t.side0) * sx - 1, (t.y + t.side0) * sy - 1)
        draw.rectangle(box, outline=TILE_COLOURS[t.label])
    if caption:
        draw.rectangle((0, 0, img.width, 14), fill=(255, 255, 255))
        draw.text((3, 2), caption, fill=(0, 0, 0))
    return img


def read_tiles(reader: SlideReader, tiles: Sequence[Tile], *,
               max_overread: float = 4.0) -> np.ndarray:
    """The pixels of many tiles of one slide, ``(N, patch_size, patch_size, 3)`` uint8, equal
    to ``[read_tile(reader, t) for t in tiles]``.

    Neighbouring tiles (a batch of a row-ordered grid) are read as one region and sliced, so
    a slide's compressed tiles are decoded once per batch rather than once per patch; when
    their bounding box is more than ``max_overread`` times the pixels asked for (scattered
    tiles), or offsets do not fall on the level's pixel grid, each tile is read alone."""
    if not tiles:
        return np.zeros((0, 0, 0, 3), dtype=np.uint8)
    level, read, patch = tiles[0].level, tiles[0].read_size, tiles[0].patch_size
    if any((t.level, t.read_size, t.patch_size) != (level, read, patch) for t in tiles):
        return np.stack([read_tile(reader, t) for t in tiles])
    ds = reader.level_downsamples[level]
    x0, y0 = min(t.x for t in tiles), min(t.y for t in tiles)
    step = round(ds)
    on_grid = level == 0 or (abs(ds - step) < 1e-9 and all(
        (t.x - x0) % step == 0 and (t.y - y0) % step == 0 for t in tiles))
    w = round((max(t.x for t in tiles) - x0) / ds) + read
    h = round((max(t.y for t in tiles) - y0) / ds) + read
    if not on_grid or w * h > max_overread * len(tiles) * read * read:
        return np.stack([read_tile(reader, t) for t in tiles])
    region = reader.read_region(level, x0, y0, w, h)
    out = np.empty((len(tiles), patch, patch, 3), dtype=np.uint8)
    for i, t in enumerate(tiles):
        cx, cy = round((t.x - x0) / ds), round((t.y - y0) / ds)
        pixels = region[cy:cy + read, cx:cx + read]
        if read != patch:
            pixels = np.asarray(Image.fromarray(np.ascontiguousarray(pixels)).resize(
                (patch, patch), Image.Resampling.BOX))
        out[i] = pixels
    return out
