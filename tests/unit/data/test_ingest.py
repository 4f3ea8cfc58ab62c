"""Writing a dataset: synthetic patches go through the same ingest path as real sources."""

import json

import pyarrow.parquet as pq

from patchray.config import DataConfig
from patchray.data.ingest import ingest_source, ingest_synthetic
from patchray.data.manifest import read_manifest
from patchray.data.records import PATCH_SCHEMA
from patchray.data.sources import SyntheticSource
from patchray.data.splits import check_patient_disjoint
from patchray.data.synthetic import generate_patches


def _data(**synthetic) -> DataConfig:
    return DataConfig.model_validate({
        "rows_per_file": 50,
        "synthetic": {"num_patients": 6, "patches_per_patient": 30, "seed": 2, **synthetic}})


def test_written_dataset_is_patient_disjoint_and_repeatable(tmp_path):
    def write(root):
        return ingest_synthetic(_data(), str(root)).to_json()

    m1, m2 = write(tmp_path / "a"), write(tmp_path / "b")
    assert m1["content_sha256"] == m2["content_sha256"]
    patients = {s: set(v["patients"]) for s, v in m1["splits"].items()}
    check_patient_disjoint(patients)
    assert sum(v["rows"] for v in m1["splits"].values()) == 180
    for split, info in m1["splits"].items():
        for name in info["files"]:
            a, b = (tmp_path / r / name for r in ("a", "b"))
            assert a.read_bytes() == b.read_bytes()
            table = pq.read_table(a)
            assert table.schema.equals(PATCH_SCHEMA)
            assert set(table.column("patient_id").to_pylist()) <= patients[split]
    assert read_manifest(str(tmp_path / "a")).to_json() == json.loads(
        (tmp_path / "a/manifest.json").read_text())


def test_synthetic_source_draws_the_generators_patches_in_any_number_of_workers(tmp_path):
    source = SyntheticSource(3, 12, size=24, seed=4)
    one = ingest_source(source, str(tmp_path / "one"), workers=1).manifest
    two = ingest_source(source, str(tmp_path / "two"), workers=2).manifest
    assert one.content_sha256 == two.content_sha256
    assert one.dataset == "synthetic" and one.source["num_patients"] == 3
    assert one.counts is not None and one.counts.written == one.counts.seen == 36
    # The same pixels, labels and positions as the generator yields them.
    stored = {}
    for split in ("train", "val", "test"):
        for name in one.split(split).files:
            for r in pq.read_table(tmp_path / "one" / name).to_pylist():
                stored[(r["patient_id"], r["x"], r["y"])] = (r["label"], r["sha256"])
    from patchray.data.records import pixel_sha256

    expected = {(p.patient_id, p.x, p.y): (p.label, pixel_sha256(p.pixels))
                for p in generate_patches(3, 12, size=24, seed=4)}
    assert stored == expected
