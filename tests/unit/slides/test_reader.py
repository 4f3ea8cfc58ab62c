"""The slide reader on the synthetic pyramidal TIFF, through tifffile and through OpenSlide."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tifffile

from patchray.errors import DataError
from patchray.slides.reader import (
    OpenSlideReader, TiffSlideReader, composite_on_white, open_slide, openslide_available,
)

needs_openslide = pytest.mark.skipif(
    not openslide_available(), reason="openslide-python / openslide-bin not installed")
BACKENDS = ["tifffile", pytest.param("openslide", marks=needs_openslide)]


@pytest.fixture(params=BACKENDS)
def slide(request, synthetic_slide):
    with open_slide(synthetic_slide.path, backend=request.param) as reader:
        yield reader


def test_reader_reports_levels_dimensions_downsamples_and_mpp(slide, synthetic_slide):
    assert slide.level_count == 3
    assert slide.level_dimensions == ((4096, 3072), (1024, 768), (256, 192))
    assert slide.dimensions == synthetic_slide.dimensions
    assert slide.level_downsamples == pytest.approx((1.0, 4.0, 16.0))
    assert slide.mpp == pytest.approx((0.5, 0.5))
    assert slide.level_mpp(0) == pytest.approx(0.5)
    assert slide.level_mpp(2) == pytest.approx(8.0)


def test_openslide_reads_the_tiled_pyramidal_tiff_as_generic_tiff(synthetic_slide):
    if not openslide_available():
        pytest.skip("openslide-python / openslide-bin not installed")
    import openslide

    assert openslide.OpenSlide.detect_format(str(synthetic_slide.path)) == "generic-tiff"
    with open_slide(synthetic_slide.path) as reader:  # auto prefers OpenSlide when it reads it
        assert isinstance(reader, OpenSlideReader)
        assert reader.properties["openslide.level-count"] == "3"


@pytest.mark.parametrize("level", [0, 1, 2])
def test_read_region_matches_the_decoded_level(slide, synthetic_slide, level):
    """Regions crossing tile borders, at every level, equal tifffile's full decode of it."""
    full = tifffile.imread(synthetic_slide.path, series=0, level=level)
    ds = 4 ** level
    lx, ly, w, h = (250, 190, 300, 140) if level < 2 else (100, 60, 120, 90)
    region = slide.read_region(level, lx * ds, ly * ds, w, h)
    assert region.dtype == np.uint8 and region.shape == (h, w, 3)
    np.testing.assert_array_equal(region, full[ly:ly + h, lx:lx + w])


def test_read_region_outside_the_slide_is_white(slide):
    w, h = slide.level_dimensions[1]
    region = slide.read_region(1, (w - 10) * 4, (h - 5) * 4, 30, 20)  # runs off both edges
    assert region.shape == (20, 30, 3)
    assert (region[5:, :] == 255).all() and (region[:, 10:] == 255).all()
    assert (slide.read_region(0, -500, -500, 50, 50) == 255).all()


def test_background_tissue_and_tumour_look_as_drawn(slide, synthetic_slide):
    x0, y0, x1, y1 = synthetic_slide.tumour_box
    glass = slide.read_region(0, 3900, 100, 64, 64).astype(float)
    tumour = slide.read_region(0, x0 + 100, y0 + 100, 256, 256).astype(float)
    benign = slide.read_region(0, x1 + 100, y0 + 100, 256, 256).astype(float)
    assert glass.min() > 225  # white glass
    assert tumour.mean() < benign.mean() - 15  # denser, darker nuclei
    assert benign.mean() < glass.mean() - 15


def test_both_backends_give_the_same_pixels(synthetic_slide):
    if not openslide_available():
        pytest.skip("openslide-python / openslide-bin not installed")
    with TiffSlideReader(synthetic_slide.path) as a, OpenSlideReader(synthetic_slide.path) as b:
        for level, x, y in [(0, 1000, 1200), (1, 2000, 400), (2, 0, 0)]:
            np.testing.assert_array_equal(a.read_region(level, x, y, 200, 150),
                                          b.read_region(level, x, y, 200, 150))


def test_bad_requests_raise_data_errors_naming_the_problem(synthetic_slide, tmp_path):
    with open_slide(synthetic_slide.path, backend="tifffile") as reader:
        with pytest.raises(DataError, match=r"level 3 does not exist; expected 0\.\.2"):
            reader.read_region(3, 0, 0, 10, 10)
        with pytest.raises(DataError, match="width and height >= 1"):
            reader.read_region(0, 0, 0, 0, 10)
        with pytest.raises(DataError, match="max_pixels"):
            reader.read_level(0, max_pixels=1000)
    with pytest.raises(DataError, match="no such slide file"):
        open_slide(tmp_path / "missing.svs")
    with pytest.raises(DataError, match="expected one of auto, openslide, tifffile"):
        open_slide(synthetic_slide.path, backend="pillow")  # type: ignore[arg-type]
    not_a_tiff = tmp_path / "notes.tif"
    not_a_tiff.write_text("hello")
    with pytest.raises(DataError, match="not a readable TIFF"):
        open_slide(not_a_tiff, backend="tifffile")


def test_auto_falls_back_to_tifffile_and_reads_stripped_tiffs(tmp_path):
    """OpenSlide refuses untiled TIFF; tifffile reads it strip by strip."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(100, 70, 3), dtype=np.uint8)
    path = tmp_path / "stripped.tif"
    tifffile.imwrite(path, pixels, photometric="rgb", rowsperstrip=16, compression="zlib",
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    with open_slide(path) as reader:
        assert isinstance(reader, TiffSlideReader)
        assert reader.level_dimensions == ((70, 100),) and reader.mpp == pytest.approx((0.25, 0.25))
        np.testing.assert_array_equal(reader.read_region(0, 5, 10, 60, 85), pixels[10:95, 5:65])
        np.testing.assert_array_equal(reader.read_level(0), pixels)


def test_tiff_without_a_resolution_unit_has_no_mpp(tmp_path):
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, np.full((64, 64, 3), 200, np.uint8), photometric="rgb",
                     tile=(32, 32), resolutionunit="NONE", resolution=(1, 1))
    with open_slide(path, backend="tifffile") as reader:
        assert reader.mpp is None and reader.level_mpp(0) is None


def test_composite_on_white_blends_transparent_pixels():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [100, 100, 100, 128]]], np.uint8)
    out = composite_on_white(rgba)
    assert out.tolist() == [[[10, 20, 30], [255, 255, 255], [177, 177, 177]]]


def test_importing_slides_loads_no_tensorflow_and_no_slide_library(tmp_path):
    code = textwrap.dedent("""
        import logging, os, sys
        before = set(os.listdir("."))
        import patchray.slides, patchray.slides.reader, patchray.slides.tiling
        import patchray.slides.synthetic
        assert set(os.listdir(".")) == before, "import created files"
        assert not logging.getLogger().handlers, "import configured logging"
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in
                        ("tensorflow", "tf_keras", "keras", "openslide", "tifffile", "skimage", "ray"))
        assert not loaded, loaded
        print("clean")
    """)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "clean" in proc.stdout
