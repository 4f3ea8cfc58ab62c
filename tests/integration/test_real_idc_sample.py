"""The real IDC sample (../shared/data, 652 patches, 2 patients) ingests cleanly.

Skips when the sample is absent (a fresh clone); never copies it into the repository.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from patchray import cli

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
