"""The dataset handle: one typed manifest read, and the answers every reader takes from it."""

import hashlib
import json

import numpy as np
import pytest

from patchray.data.ingest import ingest_source
from patchray.data.manifest import Manifest, PatchDataset, in_holdout, read_manifest
from patchray.data.sources import SyntheticSource
from patchray.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def two_patient_dataset(tmp_path_factory) -> PatchDataset:
    """3 synthetic patients: two to train on, one to test on, none for val."""
    root = tmp_path_factory.mktemp("two") / "ds"
    ingest_source(SyntheticSource(3, 10, size=24), str(root),
                  split_map={"synth-p00": "train", "synth-p01": "train", "synth-p02": "test"})
    return PatchDataset.open(str(root))


def test_handle_answers_from_the_manifest(two_patient_dataset):
    ds = two_patient_dataset
    assert isinstance(ds.manifest, Manifest)
    assert ds.encoding == "png" and ds.class_names == ("benign", "tumour")
    assert ds.rows("train") == 20 and ds.rows("val") == 0 and ds.rows("test") == 10
    assert sum(ds.label_counts("train").values()) == 20
    assert len(ds.content_sha256) == 64
    assert [s for s, _ in ds.files()] == ["train", "test"]
    assert "train: 20 patches / 2 patients" in ds.summary()


def test_reading_a_folder_without_manifest_says_what_is_missing(tmp_path):
    with pytest.raises(DataError, match="manifest.json not found"):
        read_manifest(str(tmp_path))


def test_a_manifest_with_an_unknown_key_or_wrong_type_names_it(tmp_path, two_patient_dataset):
    doc = two_patient_dataset.manifest.to_json()
    (tmp_path / "manifest.json").write_text(json.dumps({**doc, "splitz": {}}))
    with pytest.raises(DataError, match=r"manifest.json: not a valid patchray manifest "
                                         r"\(splitz: Extra inputs"):
        read_manifest(str(tmp_path))
    doc["splits"]["train"]["rows"] = "many"
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(DataError, match=r"splits\.train\.rows"):
        read_manifest(str(tmp_path))
    (tmp_path / "manifest.json").write_text(json.dumps({**doc, "schema_version": 9}))
    with pytest.raises(DataError, match="schema_version 9, expected 1"):
        read_manifest(str(tmp_path))


def test_old_manifests_without_encoding_read_as_png(tmp_path, two_patient_dataset):
    doc = two_patient_dataset.manifest.to_json()
    del doc["encoding"]
    (tmp_path / "manifest.json").write_text(json.dumps(doc))
    assert read_manifest(str(tmp_path)).encoding == "png"


def test_holdout_is_a_stable_fraction_chosen_by_pixel_hash():
    hashes = [hashlib.sha256(str(i).encode()).hexdigest() for i in range(20_000)]
    held = in_holdout(hashes, 0.2)
    assert abs(held.mean() - 0.2) < 0.01
    assert np.array_equal(held, in_holdout(list(reversed(hashes)), 0.2)[::-1])  # order-free
    assert not in_holdout(hashes, 0.0).any()


def test_holdout_validation_splits_train_rows_and_refuses_datasets_with_val(
    two_patient_dataset, tmp_path
):
    ds = two_patient_dataset
    with pytest.raises(DataError, match=r"split 'val' has no files .*data.val_holdout=0.2"):
        ds.sample_rows("val", 100)  # and Ray Data's read_split says the same
    train = ds.sample_rows("train", 100, val_holdout=0.4)
    val = ds.sample_rows("val", 100, val_holdout=0.4)
    everything = ds.sample_rows("train", 100)
    assert val and train and len(val) + len(train) == len(everything) == 20
    assert not {r["sha256"] for r in val} & {r["sha256"] for r in train}
    assert ds.resolve("test", 0.4) == ("test", None)

    with_val = tmp_path / "three"
    ingest_source(SyntheticSource(3, 10, size=24), str(with_val))
    with pytest.raises(ConfigError, match=r"has val patients; hold-out validation is only"):
        PatchDataset.open(str(with_val)).resolve("val", 0.2)


def test_sample_rows_can_hand_out_png_whatever_the_encoding(tmp_path):
    from patchray.data.records import decode_image

    ingest_source(SyntheticSource(3, 6, size=16), str(tmp_path / "raw"), encoding="raw")
    ds = PatchDataset.open(str(tmp_path / "raw"))
    rows = ds.sample_rows("train", 3, as_png=True)
    assert all(decode_image(r["image"]).shape == (16, 16, 3) for r in rows)
