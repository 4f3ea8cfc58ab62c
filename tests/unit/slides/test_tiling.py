"""Tissue mask, sliding window, centre-region labels and tiling options, without Ray."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from patchray.errors import ConfigError, DataError
from patchray.slides.reader import open_slide
from patchray.slides.tiling import (
    DEFAULT_CENTRE_FRACTION, RegionMask, TilingConfig, TissueMaskConfig, centre_box,
    centre_label, compute_tissue_mask, grid_positions, mask_from_image, mask_from_polygons,
    parse_tiling_config, read_polygons_geojson, read_tile, resolve_geometry, tile_slide,
)

PATCH = 96  # at level 0: centre region 60 px (96 * 50/80), inset 18 px


@pytest.fixture(scope="module")
def slide(synthetic_slide):
    with open_slide(synthetic_slide.path, backend="tifffile") as reader:
        yield reader


@pytest.fixture(scope="module")
def tumour(synthetic_slide):
    return mask_from_polygons(synthetic_slide.tumour_polygons, synthetic_slide.dimensions)


@pytest.fixture(scope="module")
def tiling(slide, tumour):
    return tile_slide(slide, TilingConfig(patch_size=PATCH), patient_id="p01", tumour_mask=tumour)


def test_default_centre_region_is_50_of_80():
    assert DEFAULT_CENTRE_FRACTION == 50 / 80
    assert TilingConfig().centre_fraction == 0.625
    assert centre_box(0, 0, 80, DEFAULT_CENTRE_FRACTION) == (15, 15, 50)


def test_tissue_mask_separates_tissue_from_glass(slide, synthetic_slide):
    tissue = compute_tissue_mask(slide)
    assert tissue.level == 2  # the lowest resolution by default
    assert tissue.threshold >= TissueMaskConfig().min_saturation
    truth = synthetic_slide.tissue_mask(downsample=16)
    agreement = (tissue.mask == truth).mean()
    assert agreement > 0.98, agreement
    assert tissue.fraction(3900, 50, 150, 150) == 0.0  # glass, top-right corner
    assert tissue.fraction(1200, 1300, 200, 200) == 1.0  # the middle of the first island


def test_tiles_on_the_glass_are_not_emitted(tiling, synthetic_slide):
    truth = RegionMask.from_array(synthetic_slide.tissue_mask(), synthetic_slide.dimensions)
    assert 0 < tiling.count < tiling.windows
    kept = {(t.x, t.y) for t in tiling.tiles}
    for x, y in grid_positions(synthetic_slide.dimensions, PATCH, PATCH):
        true_fraction = truth.fraction(x, y, PATCH, PATCH)
        if true_fraction == 0.0:
            assert (x, y) not in kept, (x, y)
        if true_fraction == 1.0:
            assert (x, y) in kept, (x, y)
    assert all(t.tissue_fraction >= 0.5 for t in tiling.tiles)


def test_a_slide_of_bare_glass_gives_no_tiles(tmp_path):
    rng = np.random.default_rng(0)
    glass = (240 + rng.integers(-4, 5, size=(512, 512, 3))).astype(np.uint8)
    path = tmp_path / "glass.tif"
    tifffile.imwrite(path, glass, photometric="rgb", tile=(256, 256))
    with open_slide(path, backend="tifffile") as reader:
        tiling = tile_slide(reader, TilingConfig(patch_size=64), patient_id="p0")
    assert tiling.count == 0 and tiling.windows == 64
    assert not tiling.tissue.mask.any()


def test_labels_follow_the_centre_rule(tumour, synthetic_slide):
    x0, y0, x1, y1 = synthetic_slide.tumour_box

    def label(x, y, **kw):
        return centre_label(tumour, x, y, PATCH, **kw)

    # The window's bottom-right corner (10x10 px) lies on the tumour; its centre does not.
    assert label(x0 - PATCH + 10, y0 - PATCH + 10) == (0, 0.0)
    # Its left 15 px lie on the tumour's right side; the centre starts 18 px in: benign.
    assert label(x1 - 15, y0 + 200) == (0, 0.0)
    assert label(x1 - 19, y0 + 200) == (1, pytest.approx(1 / 60))
    # The centre region's last pixel column is the tumour's first: tumour (any pixel).
    first_touch = x0 - 18 - 60 + 1
    assert label(first_touch, y0 + 200) == (1, pytest.approx(1 / 60))
    assert label(first_touch - 1, y0 + 200) == (0, 0.0)
    # ... unless more of the centre must be tumour.
    assert label(first_touch, y0 + 200, min_centre_tumour=0.5)[0] == 0
    assert label(x0 + 100, y0 + 100) == (1, 1.0)
    # A wider centre (the whole window) turns the corner case positive.
    assert label(x0 - PATCH + 10, y0 - PATCH + 10, centre_fraction=1.0)[0] == 1


def test_tiled_labels_equal_the_centre_rule_on_the_known_tumour(slide, tumour, tiling,
                                                               synthetic_slide):
    """Overlapping windows (stride 24) so some touch the tumour with their outer ring only."""
    x0, y0, x1, y1 = synthetic_slide.tumour_box
    tiling = tile_slide(slide, TilingConfig(patch_size=PATCH, stride=24), patient_id="p01",
                        tumour_mask=tumour, tissue=tiling.tissue)
    inset, side = 18, 60

    def centre_hits(t):
        cx, cy = t.x + inset, t.y + inset
        return cx < x1 and cx + side > x0 and cy < y1 and cy + side > y0

    assert tiling.positives and tiling.positives > 10
    for t in tiling.tiles:
        assert t.label == int(centre_hits(t)), t
    # Some negatives touch the tumour with their outer ring only.
    ring_only = [t for t in tiling.tiles if t.label == 0 and t.x < x1 and t.x + PATCH > x0
                 and t.y < y1 and t.y + PATCH > y0]
    assert ring_only


def test_tile_records_carry_slide_patient_level_position_and_mpp(tiling):
    t = tiling.tiles[0]
    record = t.to_dict()
    assert record["slide_id"] == "syn-p01" and record["patient_id"] == "p01"
    assert record["level"] == 0 and record["mpp"] == pytest.approx(0.5)
    assert record["x"] % PATCH == 0 and record["y"] % PATCH == 0
    assert set(record) >= {"slide_id", "patient_id", "level", "x", "y", "mpp", "label"}
    assert t.source == f"syn-p01@L0[x={t.x},y={t.y}]"


def test_without_a_mask_labels_are_none(slide):
    tiling = tile_slide(slide, TilingConfig(patch_size=PATCH), patient_id="p01")
    assert tiling.count > 0
    assert all(t.label is None and t.tumour_fraction is None for t in tiling.tiles)
    assert tiling.positives is None
    assert "tumour" not in tiling.summary()


def test_mask_image_and_polygon_files_give_the_same_labels(slide, tiling, synthetic_slide):
    polygons = read_polygons_geojson(synthetic_slide.polygons_path)
    from_geojson = mask_from_polygons(polygons, slide.dimensions)
    from_png = mask_from_image(synthetic_slide.mask_path, slide.dimensions)
    for mask in (from_geojson, from_png):
        again = tile_slide(slide, TilingConfig(patch_size=PATCH), patient_id="p01",
                           tumour_mask=mask, tissue=tiling.tissue)
        assert [t.label for t in again.tiles] == [t.label for t in tiling.tiles]


def test_target_mpp_picks_a_level_or_shrinks_a_finer_one(slide):
    at_level1 = resolve_geometry(slide, TilingConfig(patch_size=64, target_mpp=2.1))
    assert (at_level1.level, at_level1.read_size, at_level1.side0) == (1, 64, 256)
    assert at_level1.mpp == pytest.approx(2.0)  # the level's own: within the tolerance
    shrunk = resolve_geometry(slide, TilingConfig(patch_size=64, target_mpp=1.0))
    assert (shrunk.level, shrunk.read_size, shrunk.side0, shrunk.mpp) == (0, 128, 128, 1.0)
    strided = resolve_geometry(slide, TilingConfig(patch_size=64, stride=32, level=1))
    assert strided.stride0 == 128
    tiling = tile_slide(slide, TilingConfig(patch_size=64, target_mpp=1.0), patient_id="p01")
    pixels = read_tile(slide, tiling.tiles[0])
    assert pixels.shape == (64, 64, 3) and pixels.dtype == np.uint8


def test_grid_covers_edges_only_when_asked():
    inside = list(grid_positions((250, 100), 100, 100))
    assert inside == [(0, 0), (100, 0)]
    edges = list(grid_positions((250, 100), 100, 100, include_edges=True))
    assert edges == [(0, 0), (100, 0), (200, 0)]


def test_thumbnail_draws_the_grid_and_the_count(slide, tiling):
    img = tiling.thumbnail(slide, max_side=1024)
    assert img.size == (1024, 768)
    positive = next(t for t in tiling.tiles if t.label == 1)
    scale = 1024 / slide.dimensions[0]
    edge_pixel = img.getpixel((round(positive.x * scale) + 5, round(positive.y * scale)))
    assert edge_pixel == (220, 30, 30)  # tumour tiles are outlined red
    assert f"{tiling.count} tiles, {tiling.positives} tumour" in tiling.summary()


# --------------------------------------------------------------------------- bad options


@pytest.mark.parametrize(("doc", "expected"), [
    ({"patch_size": 4}, r"patch_size: Input should be greater than or equal to 8 \(got 4\)"),
    ({"patch_sise": 96}, r"unknown key 'patch_sise'; did you mean patch_size"),
    ({"centre_fraction": 0}, r"centre_fraction: Input should be greater than 0"),
    ({"min_tissue_fraction": 1.5}, r"min_tissue_fraction: Input should be less than or equal to 1"),
    ({"tissue": {"min_saturation": 2}}, r"tissue\.min_saturation: Input should be less than 1"),
    ({"tissue": {"levle": 1}}, r"unknown key 'tissue\.levle'; did you mean level\?"),
    ({"level": 1, "target_mpp": 0.5}, r"level \(1\) and target_mpp \(0\.5\) exclude each other"),
    ({"stride": "wide"}, r"stride: Input should be a valid integer"),
])
def test_bad_options_name_the_field_and_the_expected_value(doc, expected):
    with pytest.raises(ConfigError, match=expected):
        parse_tiling_config(doc, source="slides.yaml tiling")


def test_options_a_slide_cannot_satisfy_are_named(slide, tmp_path):
    with pytest.raises(ConfigError, match=r"tiling\.level=5: .* has levels 0\.\.2"):
        resolve_geometry(slide, TilingConfig(level=5))
    with pytest.raises(ConfigError, match=r"tiling\.target_mpp=0\.1: finer than .* never enlarged"):
        resolve_geometry(slide, TilingConfig(target_mpp=0.1))
    with pytest.raises(ConfigError, match=r"tiling\.tissue\.level=7"):
        compute_tissue_mask(slide, TissueMaskConfig(level=7))
    path = tmp_path / "no-mpp.tif"
    tifffile.imwrite(path, np.zeros((64, 64, 3), np.uint8), photometric="rgb")
    with open_slide(path, backend="tifffile") as reader, \
            pytest.raises(ConfigError, match="does not state its microns per pixel"):
        resolve_geometry(reader, TilingConfig(target_mpp=0.5))


def test_a_mask_of_the_wrong_shape_is_refused(synthetic_slide):
    with pytest.raises(DataError, match="does not have the aspect ratio"):
        RegionMask.from_array(np.zeros((100, 100), bool), synthetic_slide.dimensions)
    with pytest.raises(DataError, match="expected a 2-D mask"):
        RegionMask.from_array(np.zeros((4, 4, 4), bool), synthetic_slide.dimensions)
