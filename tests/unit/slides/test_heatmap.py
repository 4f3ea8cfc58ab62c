"""Heat maps on the tile grid, their GeoJSON regions, overlay and summary: plain functions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from patchray.slides.heatmap import (
    grid_shape, heat_map, overlay, slide_score, slide_summary, smoothed, tumour_regions,
)


def test_heat_map_puts_each_probability_on_its_window_and_nan_elsewhere():
    heat = heat_map([(0, 0), (100, 0), (200, 100)], [0.1, 0.9, 0.5], (400, 250),
                    side0=100, stride0=100)
    assert heat.grid.shape == grid_shape((400, 250), 100, 100) == (2, 4)
    assert heat.grid[0, 0] == pytest.approx(0.1) and heat.grid[0, 1] == pytest.approx(0.9)
    assert heat.grid[1, 2] == pytest.approx(0.5)
    assert int(heat.scored.sum()) == 3 and np.isnan(heat.grid[1, 0])
    with pytest.raises(ValueError, match="not on the grid"):
        heat_map([(50, 0)], [0.5], (400, 250), side0=100, stride0=100)
    with pytest.raises(ValueError, match="2 tile positions but 1"):
        heat_map([(0, 0), (100, 0)], [0.5], (400, 250), side0=100, stride0=100)


def test_smoothing_damps_a_lone_bright_tile_but_keeps_a_region():
    grid = np.full((5, 5), 0.1, dtype=np.float32)
    grid[2, 2] = 1.0
    assert smoothed(grid)[2, 2] == pytest.approx((1.0 + 8 * 0.1) / 9)
    grid[1:4, 1:4] = 0.9
    assert smoothed(grid)[2, 2] == pytest.approx(0.9)
    grid[0, 0] = np.nan  # unscored cells neither count nor get a value
    out = smoothed(grid)
    assert np.isnan(out[0, 0]) and out[0, 1] == pytest.approx((0.1 * 3 + 0.9 * 2) / 5)
    heat = heat_map([(0, 0)], [0.7], (100, 100), side0=100, stride0=100)
    assert slide_score(heat) == pytest.approx(0.7)
    assert slide_score(heat_map(np.zeros((0, 2)), [], (100, 100), side0=100, stride0=100)) is None


def _grid_heat(values: np.ndarray, side: int = 10, stride: int | None = None):
    stride = stride or side
    rows, cols = values.shape
    xy = [(c * stride, r * stride) for r in range(rows) for c in range(cols)]
    dims = ((cols - 1) * stride + side, (rows - 1) * stride + side)
    return heat_map(xy, values.reshape(-1), dims, side0=side, stride0=stride)


def test_regions_are_the_union_of_positive_cells_valid_geojson_for_qupath():
    import geojson
    from shapely.geometry import box, shape

    values = np.zeros((6, 6), dtype=np.float32)
    values[1:3, 1:4] = 0.8  # a 2x3 block ...
    values[1, 2] = 0.95
    values[4, 4] = 0.6  # ... and a lone tile
    values[5, 5] = 0.7  # touching the lone tile at a corner only: a region of its own
    doc = tumour_regions(_grid_heat(values), 0.5, properties={"slide_id": "s"})
    parsed = geojson.loads(json.dumps(doc))
    assert parsed.is_valid, parsed.errors()
    features = doc["features"]
    assert len(features) == 3
    first = shape(features[0]["geometry"])
    assert first.is_valid and first.equals(box(10, 10, 40, 30))
    p = features[0]["properties"]
    assert p["objectType"] == "annotation" and p["classification"]["name"] == "Tumor"
    assert p["probability"] == p["probability_max"] == pytest.approx(0.95)
    assert p["probability_mean"] == pytest.approx((5 * 0.8 + 0.95) / 6)
    assert p["tiles"] == 6 and p["area_px"] == 600 and p["slide_id"] == "s"
    assert [f["properties"]["tiles"] for f in features[1:]] == [1, 1]
    assert tumour_regions(_grid_heat(values), 0.99)["features"] == []


def test_a_ring_of_positive_cells_is_one_polygon_with_a_hole():
    from shapely.geometry import shape

    values = np.zeros((5, 5), dtype=np.float32)
    values[1:4, 1:4] = 0.9
    values[2, 2] = 0.1
    (feature,) = tumour_regions(_grid_heat(values), 0.5)["features"]
    poly = shape(feature["geometry"])
    assert len(poly.interiors) == 1 and poly.area == 8 * 100


def test_overlapping_windows_stand_for_their_centred_stride_squares():
    from shapely.geometry import box, shape

    values = np.zeros((3, 3), dtype=np.float32)
    values[1, 1] = 0.9
    (feature,) = tumour_regions(_grid_heat(values, side=20, stride=10), 0.5)["features"]
    # Window (10, 10)-(30, 30); its cell is the centred 10x10 square.
    assert shape(feature["geometry"]).equals(box(15, 15, 25, 25))


def test_summary_counts_tiles_areas_in_mm2_and_names_the_score_rule():
    values = np.array([[0.9, 0.2], [np.nan, 0.6]], dtype=np.float32)
    heat = _grid_heat(np.nan_to_num(values, nan=0.0), side=100)
    heat.grid[1, 0] = np.nan
    s = slide_summary(heat, 0.5, mpp=0.5, tissue_fraction=0.25)
    assert s["tiles"] == 3 and s["positive_tiles"] == 2
    assert s["area_unit"] == "mm2"
    # 100 px at 0.5 um = 50 um: a cell is 0.0025 mm^2; the slide is 200x200 px = 0.01 mm^2.
    assert s["positive_area"] == pytest.approx(2 * 0.0025)
    assert s["tiled_area"] == pytest.approx(3 * 0.0025)
    assert s["tissue_area"] == pytest.approx(0.25 * 0.01)
    assert s["max_probability"] == pytest.approx(0.9)
    assert s["mean_probability"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert s["slide_score"] == pytest.approx((0.9 + 0.2 + 0.6) / 3)
    assert "max of the 3x3" in s["slide_score_rule"]
    unknown = slide_summary(heat, 0.5, mpp=None, tissue_fraction=0.25)
    assert unknown["area_unit"].startswith("px2") and unknown["positive_area"] == 2 * 100 * 100


def test_overlay_colours_scored_cells_and_leaves_the_rest_of_the_slide():
    values = np.zeros((2, 2), dtype=np.float32)
    values[0, 1] = 1.0
    heat = _grid_heat(values, side=100)
    heat.grid[1, :] = np.nan
    thumb = Image.new("RGB", (50, 50), (255, 255, 255))
    out = np.asarray(overlay(thumb, heat, alpha=1.0))
    assert out.shape == (50, 50, 3)
    assert tuple(out[10, 40]) == (165, 0, 38)  # p = 1: the map's red end
    assert tuple(out[10, 10]) == (49, 54, 149)  # p = 0: its blue end
    assert tuple(out[40, 10]) == (255, 255, 255)  # no tile there
