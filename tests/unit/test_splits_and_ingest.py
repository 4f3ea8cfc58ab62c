import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from patchray.data.ingest import read_manifest, synthetic_records, write_split_dataset
from patchray.data.records import PATCH_SCHEMA, decode_image, encode_png, pixel_sha256
from patchray.data.splits import assign_patient_splits, check_patient_disjoint
from patchray.data.synthetic import generate_patches
from patchray.errors import DataError, SplitLeakError


def _counts(n: int) -> dict[str, tuple[int, int]]:
    rng = np.random.default_rng(1)
    return {f"p{i:02d}": (100, int(rng.integers(0, 100))) for i in range(n)}


def test_split_sizes_follow_fractions_and_cover_every_patient():
    split = assign_patient_splits(_counts(20), train=0.6, val=0.2, seed=3)
    assert sorted(split) == sorted(_counts(20))
    sizes = {s: list(split.values()).count(s) for s in ("train", "val", "test")}
    assert sizes == {"train": 12, "val": 4, "test": 4}


def test_split_is_deterministic_per_seed():
    assert assign_patient_splits(_counts(12), seed=5) == assign_patient_splits(_counts(12), seed=5)


def test_split_is_stratified_by_tumour_fraction():
    counts = {f"p{i:02d}": (100, i * 5) for i in range(20)}  # fractions 0 .. 0.95
    split = assign_patient_splits(counts, seed=0)
    for s in ("val", "test"):
        fractions = [counts[p][1] / 100 for p, sp in split.items() if sp == s]
        assert min(fractions) < 0.3 and max(fractions) > 0.6, (s, fractions)


def test_too_few_patients_is_an_error():
    with pytest.raises(DataError, match="at least 3 patients"):
        assign_patient_splits(_counts(2))


def test_leak_check_names_the_patient():
    with pytest.raises(SplitLeakError, match="patient 'p7' is in both 'test' and 'train'"):
        check_patient_disjoint({"train": {"p1", "p7"}, "val": {"p2"}, "test": {"p7"}})


def test_png_round_trip_and_hash():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 50, 3), dtype=np.uint8)
    back = decode_image(encode_png(pixels))
    assert np.array_equal(back, pixels)
    assert pixel_sha256(back) == pixel_sha256(pixels)


def test_decode_rejects_non_image_with_source():
    with pytest.raises(DataError, match="patch.png: not a readable PNG/JPEG"):
        decode_image(b"not an image", source="patch.png")


def test_written_dataset_is_patient_disjoint_and_repeatable(tmp_path):
    def write(root):
        records = synthetic_records(generate_patches(6, 30, seed=2))
        return write_split_dataset(records, str(root), rows_per_file=50)

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
    assert read_manifest(str(tmp_path / "a")) == json.loads((tmp_path / "a/manifest.json").read_text())


def test_reading_a_folder_without_manifest_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="manifest.json not found"):
        read_manifest(str(tmp_path))
