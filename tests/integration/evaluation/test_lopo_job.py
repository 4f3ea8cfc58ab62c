"""`patchray evaluate lopo` on the session's Ray cluster: 2 folds of a tiny synthetic dataset
run as parallel Tune trials, each thresholded on its val patient, and a rerun recomputes
nothing."""

from __future__ import annotations

import json

import pytest

from patchray import cli

# ~75 s on 2 cores (two trials each start TensorFlow, train, export and score): over the
# default suite's budget, so behind --run-slow.
pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def four_patients(tmp_path_factory) -> str:
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic

    root = str(tmp_path_factory.mktemp("lopo-data"))
    ingest_synthetic(DataConfig.model_validate(
        {"synthetic": {"num_patients": 4, "patches_per_patient": 24, "patch_size": 32,
                       "positive_fraction": 0.4}}), root)
    return root


def test_evaluate_lopo_runs_folds_in_parallel_with_val_thresholds(ray_cluster, four_patients,
                                                                   tmp_path, monkeypatch):
    from patchray import runtime
    from patchray.evaluation.lopo import PREDICTIONS, RESULT

    monkeypatch.setattr(runtime, "shutdown", lambda **_: None)  # the session's cluster stays

    runs = tmp_path / "runs"
    argv = ["evaluate", "lopo", "--config", "jobs/lopo.yaml",
            "--set", f"runs_root={runs}", "--set", f"data.root={four_patients}",
            "--set", "dataset=tiny", "--set", "train.model=tiny",
            "--set", "train.epochs=1", "--set", "train.batch_size=16",
            "--set", "data.augment=false", "--set", "lopo.hold_out=[synth-p00,synth-p01]",
            "--set", "lopo.max_concurrent_folds=2"]
    assert cli.main(argv) == 0
    out = runs / "lopo-demo" / "lopo"
    doc = json.loads((out / "lopo.json").read_text())
    folds = doc["folds"]
    assert [f["held_out"] for f in folds] == ["synth-p00", "synth-p01"]
    for f in folds:
        assert f["n"] == 24 and 0 < f["positives"] < 24  # all of the held-out patient
        assert f["held_out"] not in f["val_groups"] and len(f["val_groups"]) == 1
        assert f["held_out"] not in f["val_patients"] and f["val_n"] == 24
        assert f["threshold_rule"]["chosen_on"] == "val"
        assert 0.0 <= f["threshold"] <= 1.0 and f["auc"] is not None
        assert f["best_epoch"] == 0
    assert doc["summary"]["folds"] == 2 and doc["summary"]["pooled_n"] == 48
    assert doc["registered"] is False
    assert (out / "lopo.png").stat().st_size > 10_000
    rows = [line for line in (out / "lopo.md").read_text().splitlines()
            if line.startswith("| synth-p0")]
    assert len(rows) == 2
    # The two folds ran at the same time (parallel trials), not one after the other.
    a, b = folds
    assert a["started_s"] < b["finished_s"] and b["started_s"] < a["finished_s"], folds
    # Rerun: no fold is recomputed (the result files are kept as they were).
    before = {p: p.stat().st_mtime_ns for p in out.glob(f"folds/*/seed-0/{RESULT}")}
    assert len(before) == 2 and all((p.parent / PREDICTIONS).is_file() for p in before)
    assert cli.main(argv) == 0
    assert {p: p.stat().st_mtime_ns for p in before} == before
