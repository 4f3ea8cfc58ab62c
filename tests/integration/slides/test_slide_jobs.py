"""The slide jobs on the session's Ray cluster: tile to a dataset, predict heat maps, and the
slide benchmark in its smoke form. Synthetic pyramidal slides drawn here; nothing downloaded."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.unit.slides.conftest import write_darkness_model

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """Two slides of two patients (different seeds, so no duplicate pixels)."""
    from patchray.slides.synthetic import write_synthetic_slide

    folder = tmp_path_factory.mktemp("slides")
    return [write_synthetic_slide(folder / "syn-a.tif", width=2048, height=1536, seed=0),
            write_synthetic_slide(folder / "syn-b.tif", width=1024, height=768, seed=1)]


def _centre_overlaps(x, y, side0, box, fraction):
    from patchray.slides.tiling import centre_box

    cx, cy, side = centre_box(x, y, side0, fraction)
    x0, y0, x1, y1 = box
    return cx < x1 and cx + side > x0 and cy < y1 and cy + side > y0


def test_slide_tile_runs_a_task_per_slide_into_the_ingest_layout(ray_cluster, slides, tmp_path):
    from patchray.config import SlideTileJobConfig, load_config
    from patchray.data.manifest import PatchDataset
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_tile_job

    table = tmp_path / "patients.yaml"
    table.write_text("syn-a: patient-a\nsyn-b: patient-b\n")
    inputs = resolve_slide_inputs([s.path for s in slides], patients=table,
                                  masks=slides[0].path.parent)
    cfg = load_config(None, ["tiling.patch_size=50", "ingest.workers=1"],
                      model=SlideTileJobConfig)
    out = tmp_path / "dataset"
    result = run_tile_job(inputs, str(out), cfg,
                          split_map={"patient-a": "train", "patient-b": "test"})
    dataset = PatchDataset.open(str(out))
    assert dataset.rows("train") + dataset.rows("test") == result.report.written
    described = {s["slide_id"]: s for s in dataset.manifest.source["slides"]}
    assert dataset.manifest.source["microns_per_pixel"] == 0.5
    for split, slide in (("train", slides[0]), ("test", slides[1])):
        rows = dataset.sample_rows(split, 100_000)
        sid = slide.path.name.split(".")[0]
        assert {r["slide_id"] for r in rows} == {sid} and len(rows) == described[sid]["tiles"]
        assert described[sid]["windows"] > 1.5 * len(rows)  # background skipped
        tissue = slide.tissue_mask()
        labels = [r["label"] for r in rows]
        assert 0 < sum(labels) < len(labels)
        for r in rows:
            assert tissue[r["y"]:r["y"] + 50, r["x"]:r["x"] + 50].mean() >= 0.3
            assert r["label"] == int(_centre_overlaps(r["x"], r["y"], 50, slide.tumour_box,
                                                      cfg.tiling.centre_fraction))
        assert (out / "slides" / f"{sid}.png").is_file()
        assert json.loads((out / "slides" / f"{sid}.json").read_text())["tiles"] == len(rows)
    assert (out / "slides" / "config.yaml").is_file()



def test_slide_tile_with_a_context_scale_writes_both_views(ray_cluster, slides, tmp_path):
    """`slide tile --context-scale 4`: the multi-scale dataset (what multiscale_* train on)."""
    import io

    from PIL import Image

    from patchray.config import SlideTileJobConfig, load_config
    from patchray.data.manifest import PatchDataset
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_tile_job
    from patchray.slides.multiscale import read_views
    from patchray.slides.reader import open_slide
    from patchray.slides.tiling import Tile

    cfg = load_config(None, ["tiling.patch_size=32", "context_scale=4", "ingest.workers=1"],
                      model=SlideTileJobConfig)
    out = tmp_path / "ms"
    inputs = resolve_slide_inputs([slides[1].path], masks=slides[1].path.parent)
    run_tile_job(inputs, str(out), cfg,
                 split_map={"syn-b": "test"})
    dataset = PatchDataset.open(str(out))
    assert dataset.context_scale == 4.0
    rows = dataset.sample_rows("test", 5, as_png=True)
    with open_slide(slides[1].path) as reader:
        for r in rows:
            tile = Tile("syn-b", "syn-b", 0, r["x"], r["y"], 32, 32, 32, 0.5, 0.0, None, None)
            patch, context = read_views(reader, tile, 4.0, 32)
            for column, expected in (("image", patch), ("context_image", context)):
                np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(r[column]))),
                                              expected)

def test_slide_predict_writes_heat_maps_overlays_geojson_and_summaries(ray_cluster, demo_run,
                                                                       slides, tmp_path):
    """With the demo's registered model (trained on synthetic IDC-like patches, not on this
    slide's drawing): the GeoJSON and the heat map are checked against the model's own
    probabilities, and the Ray Data job against the model run directly on the same pixels."""
    import geojson
    from PIL import Image
    from shapely.geometry import box, shape

    from patchray.config import SlidePredictJobConfig
    from patchray.inference.predictor import PatchPredictor
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_predict_job
    from patchray.slides.reader import open_slide
    from patchray.slides.tiling import read_tile

    inputs = resolve_slide_inputs([slides[0].path])
    cfg = SlidePredictJobConfig.model_validate({"predict": {"batch_size": 32}})
    result = run_predict_job(inputs, str(demo_run.model_dir), tmp_path, cfg)
    (summary,) = result.summaries
    files = {k: tmp_path / v for k, v in summary["files"].items()}
    grid = np.load(files["heatmap"])
    assert int((~np.isnan(grid)).sum()) == summary["tiles"] == result.tiles > 100
    threshold = summary["threshold"]
    assert summary["positive_tiles"] == int((grid >= threshold).sum())
    assert summary["max_probability"] == pytest.approx(float(np.nanmax(grid)), abs=1e-5)
    with Image.open(files["overlay"]) as img:
        assert img.size == (1024, 768)
    doc = geojson.loads(files["geojson"].read_text())
    assert doc.is_valid
    assert sum(f["properties"]["tiles"] for f in doc["features"]) == summary["positive_tiles"]
    rows, cols = np.nonzero(grid >= threshold)
    for f in doc["features"]:
        poly = shape(f["geometry"])
        assert poly.is_valid and f["properties"]["probability"] >= threshold
    if len(rows):  # every positive tile's square lies in some region
        from shapely.ops import unary_union

        union = unary_union([shape(f["geometry"]) for f in doc["features"]])
        assert all(union.contains(box(c * 50 + 1, r * 50 + 1, c * 50 + 49, r * 50 + 49))
                   for r, c in zip(rows, cols))
    # Parity: the Ray Data job's probability of a tile = the predictor on read_tile's pixels.
    predictor = PatchPredictor.from_card(demo_run.model_dir)
    ys, xs = np.nonzero(~np.isnan(grid))
    pick = np.linspace(0, len(ys) - 1, 16).astype(int)
    from patchray.slides.tiling import Tile

    with open_slide(slides[0].path) as reader:
        pixels = np.stack([read_tile(reader, Tile("a", "a", 0, int(xs[i]) * 50, int(ys[i]) * 50,
                                                  50, 50, 50, 0.5, 0.0, None, None))
                           for i in pick])
    np.testing.assert_allclose(grid[ys[pick], xs[pick]], predictor.predict_pixels(pixels),
                               atol=1e-5)
    overall = json.loads((tmp_path / "summary.json").read_text())
    assert overall["tiles"] == result.tiles and overall["scoring"]["actors"] >= 1


def test_slide_predict_regions_cover_the_tumour_with_a_model_that_sees_it(ray_cluster, slides,
                                                                          tmp_path):
    """A model that tells the synthetic tumour's dense nuclei from stroma (a fixed OpenVINO
    graph): the GeoJSON regions are where the tumour was."""
    from shapely.geometry import box, shape
    from shapely.ops import unary_union

    from patchray.config import SlidePredictJobConfig
    from patchray.slides.inputs import resolve_slide_inputs
    from patchray.slides.jobs import run_predict_job

    model = write_darkness_model(tmp_path / "model")
    result = run_predict_job(resolve_slide_inputs([slides[0].path]), str(model),
                             tmp_path / "out", SlidePredictJobConfig())
    (summary,) = result.summaries
    doc = json.loads((tmp_path / "out" / summary["files"]["geojson"]).read_text())
    regions = unary_union([shape(f["geometry"]) for f in doc["features"]])
    tumour = box(*slides[0].tumour_box)
    # A mean-darkness model on 32-pixel tiles misses a few noisy tumour tiles (holes), so
    # the check is on area: most of the tumour covered, nothing far outside it.
    assert regions.intersection(tumour).area >= 0.85 * tumour.area
    assert tumour.buffer(32).contains(regions)
    assert summary["slide_score"] > 0.9


def test_slide_benchmark_smoke_measures_the_job_against_the_raw_model(ray_cluster, demo_run,
                                                                      tmp_path):
    from patchray.benchmarks import slides as bench
    from patchray.benchmarks.common import BenchOptions

    out = tmp_path / "bench"
    payload = bench.run(BenchOptions(out=out, extra={"smoke": True,
                                                     "model": str(demo_run.model_dir)}),
                        log=lambda _: None)
    assert payload["mode"] == "smoke" and payload["tiles"] > 50
    variants = {r["variant"]: r for r in payload["rows"]}
    assert set(variants) == {bench.WHOLE, bench.STAGE, bench.RAW}
    assert all(r["per_s"] > 0 for r in payload["rows"])
    assert payload["ratio_whole_vs_raw"] == pytest.approx(
        variants[bench.WHOLE]["per_s"] / variants[bench.RAW]["per_s"])
    assert json.loads((out / "slides.json").read_text())["goal"] == 0.7
    assert (out / "slides.png").is_file()
