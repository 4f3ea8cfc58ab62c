"""slide predict's pieces without Ray: reading a batch through the contract, the scorer,
the per-slide outputs, the config, and no TensorFlow on the path."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from patchray.config import SlidePredictJobConfig, SlideTileJobConfig, TilingConfig, load_config
from patchray.errors import ConfigError
from patchray.slides.inputs import resolve_slide_inputs, scan_slide


@pytest.fixture(scope="module")
def scanned(small_slide):
    (slide,) = resolve_slide_inputs([small_slide.path])
    return scan_slide(slide, TilingConfig(patch_size=32))


def _rows(scan):
    return {"slide": np.zeros(scan.count, dtype=np.int64),
            "x": np.array([t[0] for t in scan.tiles]), "y": np.array([t[1] for t in scan.tiles])}


def _slides(scan):
    return [{**scan.geometry, "slide_id": scan.slide.slide_id, "path": scan.slide.path}]


def test_the_scorer_reads_tiles_through_the_cards_contract(scanned, darkness_model):
    from patchray.inference.predictor import PatchPredictor
    from patchray.slides.reader import open_slide
    from patchray.slides.scoring import SlideScorer
    from patchray.slides.tiling import read_tile

    scorer = SlideScorer(_slides(scanned), str(darkness_model))
    rows = {k: v[:70] for k, v in _rows(scanned).items()}
    out = scorer(rows)
    assert set(out) == {"slide", "x", "y", "probability"} and out["probability"].shape == (70,)
    reference = PatchPredictor.from_card(darkness_model)
    with open_slide(scanned.slide.path) as reader:
        pixels = np.stack([read_tile(reader, t) for t in scanned.tile_objects()[:70]])
    np.testing.assert_allclose(out["probability"], reference.predict_pixels(pixels), atol=1e-6)
    scorer.readers.close()


def test_outputs_put_the_regions_over_the_synthetic_tumour(tmp_path, small_slide, scanned,
                                                           darkness_model):
    import geojson
    from shapely.geometry import box, shape
    from shapely.ops import unary_union

    from patchray.registry.card import read_card
    from patchray.slides.jobs import write_slide_outputs
    from patchray.slides.scoring import SlideScorer

    scorer = SlideScorer(_slides(scanned), str(darkness_model))
    out = scorer(_rows(scanned))
    xy = np.stack([out["x"], out["y"]], axis=1)
    card = read_card(darkness_model)
    summary = write_slide_outputs(scanned, xy, out["probability"], tmp_path, card=card,
                                  precision="f32", threshold=0.5, smoothing=3,
                                  backend="auto", max_side=512, include_edges=False)
    files = summary["files"]
    grid = np.load(tmp_path / files["heatmap"])
    assert grid.shape == (768 // 32, 1024 // 32) and int((~np.isnan(grid)).sum()) == scanned.count
    doc = geojson.loads((tmp_path / files["geojson"]).read_text())
    assert doc.is_valid and doc["features"]
    regions = unary_union([shape(f["geometry"]) for f in doc["features"]])
    tumour = box(*small_slide.tumour_box)
    # Tiles whose centre lies in the tumour score as tumour: the regions cover its inside
    # (one tile in from its edges) and stay within one tile of it.
    assert regions.contains(tumour.buffer(-32))
    assert tumour.buffer(32).contains(regions)
    assert doc["features"][0]["properties"]["classification"]["name"] == "Tumor"
    assert summary["positive_tiles"] == int((out["probability"] >= 0.5).sum())
    assert summary["slide_score"] > 0.7 and summary["area_unit"] == "mm2"
    assert summary["model"]["sha256"] == card.files["model.bin"]
    assert summary["model"]["ref"] == "darkness-synthetic@1"
    expected_area = summary["positive_tiles"] * (32 * 0.5 / 1000) ** 2
    assert summary["positive_area"] == pytest.approx(expected_area)
    assert json.loads((tmp_path / files["summary"]).read_text())["regions"] == summary["regions"]
    from PIL import Image

    with Image.open(tmp_path / files["overlay"]) as img:
        assert img.size == (512, 384)


def test_predict_tiling_takes_the_models_size_and_refuses_another(darkness_model):
    from patchray.registry.card import read_card
    from patchray.slides.jobs import tiling_for_model

    card = read_card(darkness_model)
    assert tiling_for_model(TilingConfig(), card).patch_size == 32
    with pytest.raises(ConfigError, match=r"tiling.patch_size=96: darkness-synthetic@1 takes "
                                          r"32x32 patches"):
        tiling_for_model(TilingConfig(patch_size=96), card)


def test_slide_job_configs_reject_unknown_keys_with_close_matches(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("tiling:\n  patch_sise: 50\npredict:\n  batch_size: 0\n")
    with pytest.raises(ConfigError) as e:
        load_config(spec, model=SlidePredictJobConfig)
    assert "unknown key 'tiling.patch_sise'; did you mean patch_size" in str(e.value)
    assert "predict.batch_size" in str(e.value)
    with pytest.raises(ConfigError, match="predict.smoothing must be odd"):
        load_config(None, ["predict.smoothing=4"], model=SlidePredictJobConfig)
    with pytest.raises(ConfigError, match="unknown key 'predict'"):
        load_config(None, ["predict.batch_size=8"], model=SlideTileJobConfig)


def test_the_predict_path_never_imports_tensorflow(tmp_path):
    code = ("import sys\n"
            "import patchray.slides.jobs, patchray.slides.scoring, patchray.slides.heatmap\n"
            "import patchray.slides.inputs, patchray.data.sources, patchray.serving.model_source\n"
            "bad = sorted(m for m in sys.modules if m.split('.')[0] in "
            "('tensorflow', 'tf_keras', 'keras', 'nncf'))\n"
            "assert not bad, bad\nprint('ok')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr[-2000:]


def test_a_slide_without_mask_is_all_benign_when_asked(small_slide, tmp_path):
    (slide,) = resolve_slide_inputs([small_slide.path], masks=tmp_path, missing_mask="benign")
    scan = scan_slide(slide, TilingConfig(patch_size=64))
    assert scan.count > 10 and scan.positives == 0
    unlabelled = scan_slide(replace(slide, labelled=False), TilingConfig(patch_size=64))
    assert unlabelled.positives is None
