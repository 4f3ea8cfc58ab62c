"""The real IDC sample (../shared/data, 652 patches, 2 patients) ingests cleanly.

Skips when the sample is absent (a fresh clone); never copies it into the repository.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from patchray import cli

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.realdata

EDGE = "8975/0/8975_idx5_x3601_y1701_class0.png"  # the sample's one 32-wide edge patch


def test_real_idc_sample_ingests_without_rejections(shared_idc, tmp_path, capsys):
    out = tmp_path / "idc"
    argv = ["ingest", "idc", str(shared_idc), "--out", str(out),
            "--split-map", "10253=train,8975=val"]
    assert cli.main(argv) == 0

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"] == {"seen": 652, "written": 652, "rejected": 0, "ignored": 0}
    assert manifest["undersized_patches"] == 1
    splits = manifest["splits"]
    assert (splits["train"]["patients"], splits["train"]["labels"]) == ({"10253": 549},
                                                                       {"0": 479, "1": 70})
    assert (splits["val"]["patients"], splits["val"]["labels"]) == ({"8975": 103},
                                                                   {"0": 52, "1": 51})
    val = pq.read_table(out / splits["val"]["files"][0], page_checksum_verification=True)
    edge = [r for r in val.to_pylist() if r["source"] == EDGE]
    assert [(r["height"], r["width"], r["x"], r["y"]) for r in edge] == [(50, 32, 3601, 1701)]

    assert cli.main(["dataset", "validate", str(out)]) == 0
    assert cli.main(["dataset", "show", str(out)]) == 0
    assert "undersized patches: 1" in capsys.readouterr().out
    assert (out / "contact_sheet.png").stat().st_size > 0


def test_train_on_one_real_patient_and_test_on_the_other(ray_cluster, shared_idc, tmp_path):
    """The real-tissue figure of jobs/idc-sample.yaml, shorter: train on 10253, test on 8975,
    validate on a 20% hold-out of 10253 (two patients leave none for a val split)."""
    from patchray.config import TrainJobConfig, load_config
    from patchray.workflows.train import run_train_job

    data = tmp_path / "idc"
    assert cli.main(["ingest", "idc", str(shared_idc), "--out", str(data),
                     "--split-map", "10253=train,8975=test"]) == 0
    cfg = load_config(REPO / "jobs/idc-sample.yaml", model=TrainJobConfig, overrides=[
        f"runs_root={tmp_path / 'runs'}", f"data.root={data}", "train.epochs=8",
    ])
    result = run_train_job(cfg, shutdown=False)
    test = result.metrics["test"]
    print(f"real IDC, test patient 8975: AUC {test['auc']:.3f} sensitivity "
          f"{test['sensitivity']:.3f} specificity {test['specificity']:.3f}")
    assert (test["n"], test["positives"]) == (103, 51)  # all of patient 8975, nothing else
    assert 549 * 0.1 < result.metrics["val"]["n"] < 549 * 0.3  # a hold-out of 10253
    assert "held out" in result.metrics["threshold"]["chosen_on"]
    assert test["auc"] >= 0.75, test  # 15 epochs gave 0.916; 8 must clearly beat chance
    for picture in ("test_roc.png", "test_pr.png", "test_confusion.png", "learning_curves.png"):
        assert (result.run_dir / "report" / picture).stat().st_size > 0
