"""The demo run end to end with calibration: each precision's calibration is in the card with
a threshold on its scale, the report has the reliability diagrams, and the service answers
with calibrated probabilities and says so (native API and KServe v2 metadata)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration


def test_every_passed_precision_has_its_calibration_and_threshold_on_that_scale(demo_run):
    from patchray.registry.card import read_card

    card = read_card(demo_run.model_dir)
    metrics = json.loads((demo_run.run_dir / "report" / "metrics.json").read_text())
    assert metrics["calibration"]["method"] in ("platt", "none")  # none: a chance-level fit
    assert card.threshold_rule["scale"] == metrics["threshold"]["scale"]
    for name, r in card.precisions.items():
        if not (r.available and r.passed):
            continue
        assert r.calibration is not None, name
        assert set(r.calibration.ece) == {"val", "test"}, name
        # the rule held on the calibrated val scores it was chosen on
        assert r.val["sensitivity"] >= card.threshold_rule["min_sensitivity"], name
    f32 = card.precisions["f32"]
    assert f32.calibration.model_dump(mode="json") == metrics["calibration"]
    for picture in ("reliability", "val_reliability", "roc"):
        assert (demo_run.run_dir / "report" / metrics["pictures"][picture]).is_file(), picture
    assert "## Calibration" in (demo_run.model_dir / "card.md").read_text()


def test_the_service_answers_on_the_calibrated_scale_and_says_so(demo_run):
    from patchray.data.manifest import PatchDataset
    from patchray.inference.predictor import PatchPredictor

    predictor = PatchPredictor.from_card(demo_run.model_dir)
    method = predictor.calibrated
    dataset = PatchDataset.open(str(demo_run.run_dir / "data"))
    rows = dataset.sample_rows("test", 8, as_png=True)
    images = [r["image"] for r in rows]
    served = predictor.predict_images(images)
    raw = predictor.predict_images(images, raw=True)
    if predictor.calibration is not None:
        np.testing.assert_array_equal(served, predictor.calibration.apply(raw).astype(np.float32))
    headers = {"Authorization": f"Bearer {demo_run.key}"}
    files = [("files", (f"p{i}.png", img, "image/png")) for i, img in enumerate(images)]
    r = requests.post(f"{demo_run.service_url}/v1/classify", files=files, headers=headers,
                      timeout=60)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"]["calibration"] == method
    got = np.array([p["probability"] for p in answer["predictions"]])
    np.testing.assert_allclose(got, served, atol=1e-5)
    assert [p["label"] for p in answer["predictions"]] == [
        int(p >= answer["threshold"]) for p in got]
    assert answer["threshold"] == predictor.threshold
    meta = requests.get(f"{demo_run.service_url}/v2/models/{answer['model']['name']}",
                        headers=headers, timeout=30).json()
    (probability,) = [o for o in meta["outputs"] if o["name"] == "probability"]
    assert probability["parameters"] == {"calibration": method}
