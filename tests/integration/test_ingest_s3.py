"""`patchray ingest` of every source format straight into the S3-compatible server."""

from __future__ import annotations

import pytest
from tests.unit.data.test_sources import _folder, _idc, _pcam

from patchray import cli, storage

pytestmark = pytest.mark.integration


def _idc_source(root):
    for p in ("101", "202", "303"):
        for i in range(4):
            _idc(root, p, i % 2, 51 + 50 * i, 1)
    return 12


def _pcam_source(root):
    for split, labels in (("train", [0, 1, 1, 0]), ("valid", [1, 0]), ("test", [0, 1])):
        _pcam(root, split, labels)
    return 8


def _folder_source(root):
    for p in ("pa", "pb", "pc"):
        _folder(root, f"{p}/benign/a.png")
        _folder(root, f"{p}/tumour/b.png")
    return 6


@pytest.mark.parametrize("kind,make", [("idc", _idc_source), ("pcam", _pcam_source),
                                       ("folder", _folder_source)])
def test_every_source_ingests_to_s3_and_validates(s3_server, tmp_path, kind, make, capsys):
    expected = make(tmp_path / "src")
    uri = s3_server.uri("ingest", kind)
    assert cli.main(["ingest", kind, str(tmp_path / "src"), "--out", uri]) == 0
    manifest = storage.read_json(storage.join(uri, "manifest.json"))
    assert sum(s["rows"] for s in manifest["splits"].values()) == expected
    assert all(f.startswith(uri) for f in storage.list_files(uri, ".parquet"))
    assert cli.main(["dataset", "validate", uri]) == 0
    assert cli.main(["dataset", "show", uri, "--out", str(tmp_path / "sheet.png")]) == 0
    assert (tmp_path / "sheet.png").stat().st_size > 0
    # Re-running is idempotent on S3 too: same content hash, same files.
    files = storage.list_files(uri, ".parquet")
    assert cli.main(["ingest", kind, str(tmp_path / "src"), "--out", uri]) == 0
    again = storage.read_json(storage.join(uri, "manifest.json"))
    assert again["content_sha256"] == manifest["content_sha256"]
    assert storage.list_files(uri, ".parquet") == files
