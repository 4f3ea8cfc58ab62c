"""Slide prediction with a calibrated card: the heat map holds the calibrated probability
(the scale of the card's threshold) and the summary says which calibration it went through."""

from __future__ import annotations

import numpy as np
import pytest

from patchray.config import TilingConfig
from patchray.evaluation.calibration import Calibration
from patchray.slides.inputs import resolve_slide_inputs, scan_slide
from tests.unit.slides.conftest import write_darkness_model

PLATT = Calibration(method="platt", a=0.5, b=-1.0, fitted_on="val", n=100)


@pytest.fixture(scope="module")
def calibrated_model(tmp_path_factory):
    from patchray.registry.card import read_card

    folder = write_darkness_model(tmp_path_factory.mktemp("models") / "darkness-cal" / "1",
                                  threshold=0.3)
    card = read_card(folder)
    record = card.precisions["f32"].model_copy(update={"calibration": PLATT})
    card = card.model_copy(update={"precisions": {"f32": record}})
    (folder / "card.json").write_text(card.model_dump_json(indent=1))
    return folder


def test_tiles_are_scored_calibrated_and_compared_to_the_calibrated_threshold(
        tmp_path, small_slide, calibrated_model):
    from patchray.inference.predictor import PatchPredictor
    from patchray.registry.card import read_card
    from patchray.slides.jobs import write_slide_outputs
    from patchray.slides.scoring import SlideScorer

    (slide,) = resolve_slide_inputs([small_slide.path])
    scan = scan_slide(slide, TilingConfig(patch_size=32))
    rows = {"slide": np.zeros(scan.count, dtype=np.int64),
            "x": np.array([t[0] for t in scan.tiles]), "y": np.array([t[1] for t in scan.tiles])}
    # the tumour (x 256..383, y 256..447) and some stroma around it: enough, and quick
    near = (np.abs(rows["x"] - 320) <= 128) & (np.abs(rows["y"] - 352) <= 160)
    rows = {k: v[near] for k, v in rows.items()}
    slides = [{**scan.geometry, "slide_id": scan.slide.slide_id, "path": scan.slide.path}]
    scorer = SlideScorer(slides, str(calibrated_model))
    out = scorer(rows)
    scorer.readers.close()
    raw_scorer = SlideScorer(slides, str(calibrated_model))
    raw_scorer.predictor = PatchPredictor(calibrated_model / "model.xml",
                                          scorer.predictor.preprocess)  # no card: raw
    raw = raw_scorer(rows)["probability"]
    raw_scorer.readers.close()
    np.testing.assert_array_equal(out["probability"], PLATT.apply(raw).astype(np.float32))
    # platt a=0.5 pulls the darkness model's ~0.97 / ~0.03 towards the middle
    assert out["probability"].max() < raw.max() and out["probability"].min() > raw.min()

    card = read_card(calibrated_model)
    xy = np.stack([out["x"], out["y"]], axis=1)
    summary = write_slide_outputs(scan, xy, out["probability"], tmp_path, card=card,
                                  precision="f32", threshold=card.threshold("f32"), smoothing=3,
                                  backend="auto", max_side=256, include_edges=False)
    assert summary["model"]["calibration"] == "platt" and summary["threshold"] == 0.3
    assert summary["positive_tiles"] == int((out["probability"] >= 0.3).sum()) > 0
    assert summary["max_probability"] == pytest.approx(float(out["probability"].max()), abs=1e-6)
