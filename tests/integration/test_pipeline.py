"""The whole pipeline on the real stack, tiny: Ray Data -> Ray Train (2 workers) -> OpenVINO ->
Ray Serve over HTTP -> Ray's Prometheus endpoint. One run, inspected by several tests."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.integration


def test_run_directory_holds_every_stage_output(demo_run):
    run = demo_run.run_dir
    for rel in ["config.yaml", "data/manifest.json", "best_checkpoint/meta.json",
                "report/metrics.json", "report/test_roc.png", "report/test_pr.png",
                "report/test_confusion.png", "report/learning_curves.png",
                "demo_predictions.json", "timings.json", "model.json"]:
        assert (run / rel).is_file(), rel
    # The model lives in the registry; the run keeps a pointer to it.
    pointer = json.loads((run / "model.json").read_text())
    assert demo_run.model_dir.parts[-3:] == ("models", pointer["name"], str(pointer["version"]))
    for name in ("model.xml", "model.bin", "card.json", "card.md"):
        assert (demo_run.model_dir / name).is_file(), name
    assert not (run / "export").exists()  # the build folder is gone once registered


def test_training_reports_every_epoch_and_test_metrics(demo_run):
    metrics = json.loads((demo_run.run_dir / "report" / "metrics.json").read_text())
    assert [h["epoch"] for h in metrics["history"]] == [0, 1, 2]
    assert all(0.0 <= h["val_auc"] <= 1.0 for h in metrics["history"])
    test = metrics["test"]
    assert 0.0 <= test["auc"] <= 1.0 and test["n"] > 0
    # The threshold rule held on validation, where it was chosen.
    assert metrics["val"]["sensitivity"] >= 0.95
    assert metrics["threshold"]["rule"] == "sensitivity"


def test_gradients_are_all_reduced_so_replicas_end_identical(demo_run):
    replica_dir = demo_run.run_dir / "train" / "replicas"
    reports = [json.loads(p.read_text()) for p in sorted(replica_dir.glob("rank*.json"))]
    assert [r["rank"] for r in reports] == [0, 1]
    assert reports[0]["trainable_weights_sha256"] == reports[1]["trainable_weights_sha256"]


def test_openvino_matches_keras(demo_run):
    meta = json.loads((demo_run.model_dir / "card.json").read_text())
    assert meta["parity"]["keras_vs_openvino_max_abs_diff"] < 1e-4
    assert meta["input"]["size"] == 50 and meta["input"]["scale"] == pytest.approx(1 / 255)


def test_every_precision_is_measured_and_gated_on_validation(demo_run):
    from patchray.inference.predictor import PatchPredictor
    from patchray.registry.card import read_card

    card = read_card(demo_run.model_dir)
    assert set(card.precisions) == {"f32", "bf16", "int8"}
    f32 = card.precisions["f32"]
    assert f32.val_auc == pytest.approx(demo_run.metrics["val"]["auc"])
    assert f32.threshold == pytest.approx(demo_run.metrics["threshold"]["value"])
    for name, r in card.precisions.items():
        if not r.available:
            continue
        assert r.images_per_s > 0 and r.threshold is not None, name
        assert r.passed == (r.auc_drop <= (r.max_auc_drop or 0.0)), name
        # What failed its gate is not registered; what passed is there.
        assert (demo_run.model_dir / r.file).is_file() == (r.passed or r.file == f32.file), name
    # A predictor built from the IR and the card in memory uses that precision's threshold.
    for name in (n for n, r in card.precisions.items() if r.passed):
        predictor = PatchPredictor.from_card(demo_run.model_dir, card, precision=name)
        assert predictor.threshold == card.precisions[name].threshold
        assert predictor.precision == name
    served = card.precisions[card.serving_precision]
    assert served.passed
    assert served.images_per_s == max(r.images_per_s for r in card.precisions.values()
                                      if r.passed)


def test_served_answers_match_direct_openvino_inference(demo_run):
    from patchray.data.manifest import PatchDataset
    from patchray.inference.predictor import PatchPredictor

    rows = demo_run.predictions
    assert len(rows) == 8
    predictor = PatchPredictor.from_card(demo_run.model_dir)  # the precision served
    dataset = PatchDataset.open(str(demo_run.run_dir / "data"))
    test_rows = dataset.sample_rows("test", 10_000, as_png=True)
    lookup = {(r["patient_id"], r["x"], r["y"]): r["image"] for r in test_rows}
    direct = predictor.predict_images([lookup[(a["patient_id"], a["x"], a["y"])] for a in rows])
    served = np.array([a["probability"] for a in rows])
    np.testing.assert_allclose(served, direct, atol=1e-5)
    for a in rows:
        assert a["label"] == int(a["probability"] >= a["threshold"])
        assert a["label_name"] == ("tumour" if a["label"] else "benign")
        assert a["model_version"] == str(predictor.card.version)
        assert a["precision"] == predictor.card.serving_precision
        assert a["threshold"] == predictor.card.threshold("auto")


def test_health_and_model_endpoints(demo_run):
    r = requests.get(f"{demo_run.service_url}/healthz", timeout=30)  # open
    assert r.status_code == 200 and r.json()["status"] == "ok"
    card = requests.get(f"{demo_run.service_url}/v1/model", timeout=30,
                        headers={"Authorization": f"Bearer {demo_run.key}"}).json()
    assert card["precisions"]["f32"]["threshold"] == pytest.approx(
        demo_run.metrics["threshold"]["value"])
    assert card["metrics"]["test"]["auc"] == pytest.approx(demo_run.metrics["test"]["auc"])
    assert card["files"] and card["version"] >= 1


def test_prometheus_endpoint_exports_prediction_counters(demo_run, metrics_port):
    deadline = time.time() + 90  # Ray's metrics agent exports on a ~10 s cycle
    text = ""
    while time.time() < deadline:
        text = requests.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
        if "ray_patchray_predictions_total" in text and "ray_patchray_inference_batch_size" in text:
            break
        time.sleep(3)
    assert "ray_patchray_predictions_total" in text
    counted = sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("ray_patchray_predictions_total{")
    )
    assert counted >= 8
