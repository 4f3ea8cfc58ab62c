"""Heat maps of tile probabilities on a slide's grid, and what is drawn and written from them.

Plain functions, no Ray, no model::

    heat = heat_map(tiles_xy, probabilities, dimensions, side0=100, stride0=100)
    heat.grid                                  # (rows, cols) float32, NaN where no tile
    regions = tumour_regions(heat, threshold)  # QuPath-ready GeoJSON FeatureCollection
    overlay(thumbnail, heat).save("p01-heatmap.png")
    slide_summary(heat, threshold, ...)        # tiles, areas, max/mean, slide score

The grid is the sliding window's: cell ``(row, col)`` is the window whose top-left is
level-0 ``(col * stride0, row * stride0)``. A cell *stands for* the square of side
``min(stride0, side0)`` centred on its window (the window itself without overlap), so cells
tile the plane and never overlap: areas add up and adjacent positive cells union into one
polygon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

# QuPath's default colour of the Tumor class; its classification names are case-sensitive.
QUPATH_TUMOUR = {"name": "Tumor", "color": [200, 0, 0]}
# Blue (0) -> pale yellow (0.5) -> red (1), a diverging map readable over H&E.
COLOUR_STOPS = np.array([[49, 54, 149], [116, 173, 209], [255, 255, 191], [244, 109, 67],
                         [165, 0, 38]], dtype=np.float32)


@dataclass(frozen=True)
class HeatMap:
    """Probabilities on a slide's window grid (level-0 geometry alongside)."""

    grid: np.ndarray  # (rows, cols) float32, NaN where no tissue tile was scored
    dimensions: tuple[int, int]  # slide level 0 (width, height)
    side0: int  # window side, level-0 pixels
    stride0: int  # window step, level-0 pixels

    @property
    def cell(self) -> int:
        """Side of the square a cell stands for (level-0 pixels)."""
        return min(self.side0, self.stride0)

    def cell_origin(self, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-0 top-left (x, y) of the squares cells stand for."""
        offset = (self.side0 - self.cell) / 2
        return cols * self.stride0 + offset, rows * self.stride0 + offset

    @property
    def scored(self) -> np.ndarray:
        return ~np.isnan(self.grid)


def grid_shape(dimensions: tuple[int, int], side0: int, stride0: int, *,
               include_edges: bool = False) -> tuple[int, int]:
    """(rows, cols) of the window grid, as :func:`patchray.slides.tiling.grid_positions`."""
    w, h = dimensions
    last_x, last_y = (w - 1, h - 1) if include_edges else (w - side0, h - side0)
    return max(0, last_y // stride0 + 1), max(0, last_x // stride0 + 1)


def heat_map(xy: Sequence[tuple[int, int]] | np.ndarray, probabilities: Sequence[float] | np.ndarray,
             dimensions: tuple[int, int], *, side0: int, stride0: int,
             include_edges: bool = False) -> HeatMap:
    """Tile positions (level-0 top-left, on the grid) and their probabilities -> a HeatMap."""
    xy = np.asarray(xy, dtype=np.int64).reshape(-1, 2)
    p = np.asarray(probabilities, dtype=np.float32).reshape(-1)
    if len(xy) != len(p):
        raise ValueError(f"{len(xy)} tile positions but {len(p)} probabilities")
    if np.any(xy % stride0):
        raise ValueError(f"tile positions are not on the grid of stride {stride0}")
    rows, cols = grid_shape(dimensions, side0, stride0, include_edges=include_edges)
    grid = np.full((rows, cols), np.nan, dtype=np.float32)
    grid[xy[:, 1] // stride0, xy[:, 0] // stride0] = p
    return HeatMap(grid, tuple(dimensions), side0, stride0)  # type: ignore[arg-type]


def smoothed(grid: np.ndarray, size: int = 3) -> np.ndarray:
    """Mean over each cell's ``size`` x ``size`` neighbourhood, of scored cells only (NaN
    stays NaN): one bright tile among benign neighbours is damped, a region is not."""
    if size <= 1:
        return grid.copy()
    r = size // 2
    valid = ~np.isnan(grid)
    values = np.pad(np.where(valid, grid, 0.0).astype(np.float64), r)
    counts = np.pad(valid.astype(np.float64), r)
    total = np.zeros(grid.shape, dtype=np.float64)
    n = np.zeros(grid.shape, dtype=np.float64)
    rows, cols = grid.shape
    for dy in range(size):
        for dx in range(size):
            total += values[dy:dy + rows, dx:dx + cols]
            n += counts[dy:dy + rows, dx:dx + cols]
    out = np.full(grid.shape, np.nan, dtype=np.float32)
    out[valid] = (total[valid] / n[valid]).astype(np.float32)
    return out


def slide_score(heat: HeatMap, size: int = 3) -> float | None:
    """The slide-level score: the maximum of the ``size`` x ``size``-smoothed heat map."""
    if not heat.scored.any():
        return None
    return float(np.nanmax(smoothed(heat.grid, size)))


# --------------------------------------------------------------------------- GeoJSON


def tumour_regions(heat: HeatMap, threshold: float, *,
                   properties: dict[str, Any] | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the regions whose cells have probability >=
    ``threshold``: the union of their squares (shapely), one Polygon feature per connected
    region (holes kept), in level-0 pixel coordinates, with the region's maximum and mean
    probability, tile count and area, and QuPath's ``objectType`` and ``classification``."""
    import shapely
    from shapely.geometry import box, mapping
    from shapely.geometry.polygon import orient

    rows, cols = np.nonzero(heat.scored & (np.nan_to_num(heat.grid, nan=-1.0) >= threshold))
    features: list[dict[str, Any]] = []
    if len(rows):
        x, y = heat.cell_origin(rows, cols)
        c = heat.cell
        union = shapely.unary_union([box(a, b, a + c, b + c) for a, b in zip(x, y)])
        polygons = list(getattr(union, "geoms", [union]))
        cx, cy = x + c / 2, y + c / 2
        values = heat.grid[rows, cols]
        for i, poly in enumerate(sorted(polygons, key=lambda g: (g.bounds[1], g.bounds[0]))):
            inside = shapely.contains_xy(poly, cx, cy)
            v = values[inside]
            features.append({
                "type": "Feature",
                "id": f"tumour-region-{i + 1}",
                "geometry": _plain(mapping(orient(poly, 1.0))),
                "properties": {
                    "objectType": "annotation",
                    "classification": dict(QUPATH_TUMOUR),
                    "name": f"tumour region {i + 1}",
                    "probability": round(float(v.max()), 6),
                    "probability_max": round(float(v.max()), 6),
                    "probability_mean": round(float(v.mean()), 6),
                    "tiles": int(inside.sum()),
                    "area_px": float(poly.area),
                    "threshold": threshold,
                    **(properties or {}),
                },
            })
    return {"type": "FeatureCollection", "features": features}


def _plain(geometry: Any) -> Any:
    """shapely's mapping() as JSON-ready lists (tuples -> lists)."""
    if isinstance(geometry, dict):
        return {k: _plain(v) for k, v in geometry.items()}
    if isinstance(geometry, list | tuple):
        return [_plain(v) for v in geometry]
    return float(geometry) if isinstance(geometry, float | np.floating) else geometry


# --------------------------------------------------------------------------- pictures


def colour_map(values: np.ndarray) -> np.ndarray:
    """Probabilities (any shape, 0..1) -> uint8 RGB, piecewise linear over COLOUR_STOPS."""
    v = np.clip(np.nan_to_num(values, nan=0.0), 0.0, 1.0) * (len(COLOUR_STOPS) - 1)
    i = np.minimum(v.astype(np.int64), len(COLOUR_STOPS) - 2)
    t = (v - i)[..., None]
    rgb = COLOUR_STOPS[i] * (1 - t) + COLOUR_STOPS[i + 1] * t
    return np.rint(rgb).astype(np.uint8)


def overlay(thumbnail: Image.Image, heat: HeatMap, *, alpha: float = 0.5,
            threshold: float | None = None, caption: str | None = None) -> Image.Image:
    """The heat map over a slide thumbnail (any size with the slide's aspect ratio): each
    thumbnail pixel takes the colour of the cell whose square holds it; cells without a
    tile leave the slide as it is. With ``threshold``, positive cells are outlined."""
    base = np.asarray(thumbnail.convert("RGB"), dtype=np.float32)
    h, w = base.shape[:2]
    sx, sy = heat.dimensions[0] / w, heat.dimensions[1] / h  # level-0 pixels per thumb pixel
    offset = (heat.side0 - heat.cell) / 2
    # Cell of each thumbnail pixel's centre (cells are cell-sized squares from `offset`).
    gx = np.floor(((np.arange(w) + 0.5) * sx - offset) / heat.stride0).astype(np.int64)
    gy = np.floor(((np.arange(h) + 0.5) * sy - offset) / heat.stride0).astype(np.int64)
    inside_x = (gx >= 0) & (gx < heat.grid.shape[1]) & \
        (((np.arange(w) + 0.5) * sx - offset) - gx * heat.stride0 < heat.cell)
    inside_y = (gy >= 0) & (gy < heat.grid.shape[0]) & \
        (((np.arange(h) + 0.5) * sy - offset) - gy * heat.stride0 < heat.cell)
    values = np.full((h, w), np.nan, dtype=np.float32)
    if heat.grid.size:
        sub = heat.grid[np.clip(gy, 0, heat.grid.shape[0] - 1)][:, np.clip(gx, 0, heat.grid.shape[1] - 1)]
        values = np.where(inside_y[:, None] & inside_x[None, :], sub, np.nan)
    scored = ~np.isnan(values)
    out = base.copy()
    out[scored] = (1 - alpha) * base[scored] + alpha * colour_map(values[scored])
    img = Image.fromarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    if threshold is not None:
        rows, cols = np.nonzero(heat.scored & (np.nan_to_num(heat.grid, nan=-1.0) >= threshold))
        x, y = heat.cell_origin(rows, cols)
        for a, b in zip(x, y):
            draw.rectangle((a / sx, b / sy, (a + heat.cell) / sx - 1, (b + heat.cell) / sy - 1),
                           outline=(0, 0, 0))
    if caption:
        draw.rectangle((0, 0, img.width, 14), fill=(255, 255, 255))
        draw.text((3, 2), caption, fill=(0, 0, 0))
    return img


def thumbnail_of(reader: Any, *, max_side: int = 1024) -> Image.Image:
    """A slide thumbnail at most ``max_side`` a side (the level :func:`draw_tiles` picks)."""
    from patchray.slides.tiling import draw_tiles

    return draw_tiles(reader, [], max_side=max_side)


# --------------------------------------------------------------------------- summary


def slide_summary(heat: HeatMap, threshold: float, *, mpp: float | None,
                  tissue_fraction: float, smoothing: int = 3) -> dict[str, Any]:
    """Tiles, tissue and positive areas (mm^2 when the slide's level-0 microns per pixel
    ``mpp`` is known, else level-0 pixels^2), max and mean probability, the slide score."""
    scored = heat.scored
    values = heat.grid[scored]
    positive = int((values >= threshold).sum())
    cell_area = float(heat.cell) ** 2
    w, h = heat.dimensions
    to_unit = (mpp / 1000.0) ** 2 if mpp else 1.0
    unit = "mm2" if mpp else "px2 (level 0)"
    return {
        "tiles": int(scored.sum()),
        "grid": {"rows": int(heat.grid.shape[0]), "cols": int(heat.grid.shape[1]),
                 "side0": heat.side0, "stride0": heat.stride0, "cell0": heat.cell},
        "area_unit": unit,
        "tissue_area": round(tissue_fraction * w * h * to_unit, 6),
        "tiled_area": round(int(scored.sum()) * cell_area * to_unit, 6),
        "positive_area": round(positive * cell_area * to_unit, 6),
        "positive_tiles": positive,
        "max_probability": round(float(values.max()), 6) if len(values) else None,
        "mean_probability": round(float(values.mean()), 6) if len(values) else None,
        "slide_score": slide_score(heat, smoothing),
        "slide_score_rule": f"max of the {smoothing}x{smoothing} mean-smoothed heat map "
                            "(scored tiles only)",
        "threshold": threshold,
    }
