"""The synthetic slide builder writes what it says: a tiled pyramid, mpp tags, its masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from patchray.errors import DataError
from patchray.slides.synthetic import write_synthetic_slide


def test_slide_is_a_tiled_pyramid_in_the_main_ifd_chain(synthetic_slide):
    with tifffile.TiffFile(synthetic_slide.path) as tif:
        assert len(tif.pages) == 3  # levels in the main chain (OpenSlide ignores SubIFDs)
        for i, page in enumerate(tif.pages):
            assert page.is_tiled and (page.tilewidth, page.tilelength) == (256, 256)
            assert page.subfiletype == (1 if i else 0)
            assert page.tags["ResolutionUnit"].value == 3  # centimetre
            x_res, _ = page.get_resolution()
            assert 1e4 / x_res == pytest.approx(0.5 * 4 ** i)
        assert [lv.shape for lv in tif.series[0].levels] == [
            (3072, 4096, 3), (768, 1024, 3), (192, 256, 3)]


def test_masks_beside_the_slide_match_the_tumour(synthetic_slide):
    x0, y0, x1, y1 = synthetic_slide.tumour_box
    assert (x0, y0, x1, y1) == (1024, 1024, 1536, 1792)
    png = np.asarray(Image.open(synthetic_slide.mask_path)) > 0
    assert png.shape == (3072, 4096)
    assert png.sum() == (x1 - x0) * (y1 - y0) and png[y0:y1, x0:x1].all()
    doc = json.loads(synthetic_slide.polygons_path.read_text())
    ring = doc["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    # The tumour lies inside tissue.
    assert synthetic_slide.tissue_mask()[png].all()


def test_same_seed_same_pixels_and_small_sizes_work(tmp_path):
    a = write_synthetic_slide(tmp_path / "a.tif", width=512, height=384, downsamples=(1, 4))
    b = write_synthetic_slide(tmp_path / "b.tif", width=512, height=384, downsamples=(1, 4))
    c = write_synthetic_slide(tmp_path / "c.tif", width=512, height=384, downsamples=(1, 4),
                              seed=1)
    pixels = [tifffile.imread(s.path, series=0, level=0) for s in (a, b, c)]
    np.testing.assert_array_equal(pixels[0], pixels[1])
    assert not np.array_equal(pixels[0], pixels[2])
    assert a.tumour_box == (128, 128, 192, 224)


@pytest.mark.parametrize(("kwargs", "expected"), [
    ({"width": 1000}, "divisible by every downsample"),
    ({"downsamples": (2, 4)}, "starting at 1"),
    ({"tile_size": 100}, "multiples of 16"),
])
def test_bad_builder_arguments_are_refused(tmp_path, kwargs, expected):
    with pytest.raises(DataError, match=expected):
        write_synthetic_slide(tmp_path / "x.tif", **kwargs)
