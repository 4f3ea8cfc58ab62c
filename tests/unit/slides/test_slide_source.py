"""Slides -> patients and masks -> SlideSource -> the ingest writer (no Ray: the scan runs
slide after slide here; the Ray tasks run the same functions)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from patchray.config import TilingConfig
from patchray.errors import DataError
from patchray.slides.inputs import find_mask, read_patient_table, resolve_slide_inputs


def test_patient_tables_from_csv_and_yaml(tmp_path):
    csv = tmp_path / "patients.csv"
    csv.write_text("Slide_ID,patient_id\np01.svs,A\np02,A\np03,B\n")
    assert read_patient_table(csv) == {"p01": "A", "p02": "A", "p03": "B"}
    yml = tmp_path / "patients.yaml"
    yml.write_text("p01: A\np02: 7\n")
    assert read_patient_table(yml) == {"p01": "A", "p02": "7"}
    bad = tmp_path / "bad.csv"
    bad.write_text("name,who\np01,A\n")
    with pytest.raises(DataError, match=r"bad.csv: expected a CSV header with a slide column"):
        read_patient_table(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("slide,patient\np01,A\np01,B\n")
    with pytest.raises(DataError, match=r"twice.csv line 3: slide 'p01' is given two patients"):
        read_patient_table(twice)


def test_masks_are_found_by_slide_id_polygons_first(tmp_path):
    (tmp_path / "s1-tumour.png").write_bytes(b"")
    assert find_mask(tmp_path, "s1").name == "s1-tumour.png"
    (tmp_path / "s1.geojson").write_text("{}")
    assert find_mask(tmp_path, "s1").name == "s1.geojson"
    (tmp_path / "s1_mask.json").write_text("{}")
    with pytest.raises(DataError, match="more than one mask for slide 's1'"):
        find_mask(tmp_path, "s1")
    assert find_mask(tmp_path, "s2") is None


def test_every_problem_with_the_slide_list_is_named_at_once(tmp_path, small_slide):
    other = tmp_path / "syn-s01.tif"  # same slide id as small_slide
    shutil.copy(small_slide.path, other)
    table = tmp_path / "p.csv"
    table.write_text("slide_id,patient_id\nnobody,X\n")
    with pytest.raises(DataError) as e:
        resolve_slide_inputs([small_slide.path, other, tmp_path / "missing.tif"],
                             patients=table)
    text = str(e.value)
    assert "missing.tif: no such slide file" in text
    assert "slide id 'syn-s01' is also" in text
    assert "not in the patient table" in text
    with pytest.raises(DataError, match="no tumour mask for 'syn-s01'.*missing_mask=benign"):
        resolve_slide_inputs([small_slide.path], masks=tmp_path)
    (benign,) = resolve_slide_inputs([small_slide.path], masks=tmp_path, missing_mask="benign")
    assert benign.mask is None and benign.labelled and benign.patient_id == "syn-s01"


def test_slide_tiles_ingest_split_by_patient_labelled_by_the_centre_rule(tmp_path, small_slide):
    from patchray.data.ingest import ingest_source
    from patchray.data.manifest import PatchDataset
    from patchray.data.sources import SlideSource
    from patchray.slides.tiling import centre_box

    slides = resolve_slide_inputs([small_slide.path], masks=small_slide.path.parent)
    assert slides[0].mask.endswith("syn-s01-tumour.geojson")
    config = TilingConfig(patch_size=32)
    out = tmp_path / "ds"
    source = SlideSource(slides, config, thumbnails=str(out / "slides"))
    with pytest.raises(DataError, match=r"1 patient\(s\) \(syn-s01\) cannot be split.*"
                                        r"--split-map syn-s01=train"):
        ingest_source(source, str(out))
    result = ingest_source(source, str(out), split_map={"syn-s01": "train"})
    dataset = PatchDataset.open(str(out))
    rows = dataset.sample_rows("train", 10_000)
    assert len(rows) == dataset.rows("train") == result.report.written > 100
    tissue = small_slide.tissue_mask()
    x0, y0, x1, y1 = small_slide.tumour_box
    for r in rows:
        assert (r["height"], r["width"]) == (32, 32) and r["slide_id"] == "syn-s01"
        # Kept windows are about half tissue or more (the mask is of the x16 level): never
        # bare glass.
        assert tissue[r["y"]:r["y"] + 32, r["x"]:r["x"] + 32].mean() >= 0.3
        cx, cy, side = centre_box(r["x"], r["y"], 32, config.centre_fraction)
        overlaps = cx < x1 and cx + side > x0 and cy < y1 and cy + side > y0
        assert r["label"] == int(overlaps), r["source"]
    assert 0 < sum(r["label"] for r in rows) < len(rows)
    described = dataset.manifest.source
    assert described["kind"] == "slides" and described["microns_per_pixel"] == 0.5
    assert described["tiling"]["patch_size"] == 32
    (slide,) = described["slides"]
    assert slide["tiles"] == len(rows) and slide["patient_id"] == "syn-s01"
    assert slide["windows"] > 1.5 * len(rows)  # the background was skipped
    count = json.loads((out / "slides" / "syn-s01.json").read_text())
    assert count["tiles"] == len(rows) and count["tumour_tiles"] == sum(r["label"] for r in rows)
    assert (out / "slides" / "syn-s01.png").stat().st_size > 1000


def test_unlabelled_slides_go_to_the_unlabelled_split_without_a_split_map(tmp_path, small_slide):
    from patchray.data.ingest import ingest_source
    from patchray.data.sources import SlideSource

    source = SlideSource(resolve_slide_inputs([small_slide.path]), TilingConfig(patch_size=64))
    result = ingest_source(source, str(tmp_path / "ds"))
    assert result.manifest.split("unlabelled").rows == result.report.written > 10
    assert result.manifest.split_rule == {"by": "none", "split": "unlabelled"}


@pytest.mark.parametrize("level", [0, 1])
def test_reading_neighbouring_tiles_together_gives_the_pixels_of_each(small_slide, level):
    from patchray.slides.reader import open_slide
    from patchray.slides.tiling import read_tile, read_tiles, tile_slide

    with open_slide(small_slide.path, backend="tifffile") as reader:
        config = TilingConfig(patch_size=16, level=level) if level else \
            TilingConfig(patch_size=24, target_mpp=0.75)  # level 0 read at 36 px, shrunk
        tiles = tile_slide(reader, config, patient_id="p").tiles
        assert len(tiles) > 40
        batch = tiles[10:50]
        np.testing.assert_array_equal(read_tiles(reader, batch),
                                      np.stack([read_tile(reader, t) for t in batch]))
        scattered = [tiles[0], tiles[-1]]  # far apart: read one by one
        np.testing.assert_array_equal(read_tiles(reader, scattered),
                                      np.stack([read_tile(reader, t) for t in scattered]))
