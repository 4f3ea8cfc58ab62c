"""``patchray bench sgan``'s dataset builder: 20% of train's labels kept, exactly and
stratified by class, the rest written as the unlabelled split (no Ray, no training)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow.parquet as pq

from patchray.benchmarks.sgan import semi_supervised_dataset, stratified_subset


def _rows(dataset, split):
    fs, paths = dataset.split_files(split)
    return [r for p in paths for r in pq.read_table(p, filesystem=fs).to_pylist()]


def test_stratified_subset_keeps_exact_counts_per_class() -> None:
    labels = np.array([0] * 70 + [1] * 30)
    keep = stratified_subset(labels, 0.2, seed=3)
    assert Counter(labels[keep].tolist()) == {0: 14, 1: 6}
    assert (keep == stratified_subset(labels, 0.2, seed=3)).all()  # chosen by the seed
    assert not (keep == stratified_subset(labels, 0.2, seed=4)).all()


def test_semi_supervised_dataset_splits_train_into_labelled_and_unlabelled(tmp_path) -> None:
    from patchray.config import DataConfig
    from patchray.data.ingest import ingest_synthetic
    from patchray.data.manifest import PatchDataset
    from patchray.data.validate import check_dataset

    data = DataConfig.model_validate(
        {"synthetic": {"num_patients": 5, "patches_per_patient": 24, "patch_size": 16}})
    ingest_synthetic(data, str(tmp_path / "full"))
    full = PatchDataset.open(str(tmp_path / "full"))
    semi = semi_supervised_dataset(full, str(tmp_path / "semi"), fraction=0.2, seed=0)

    counts = full.label_counts("train")
    expected = {k: max(1, round(0.2 * n)) for k, n in counts.items()}
    assert semi.label_counts("train") == expected
    assert semi.rows("unlabelled") == full.rows("train") - sum(expected.values())
    assert semi.label_counts("unlabelled") == {"null": semi.rows("unlabelled")}
    unlabelled = _rows(semi, "unlabelled")
    assert all(r["label"] is None for r in unlabelled)
    # Every train patch is in exactly one of the two; val and test are untouched.
    train_hashes = {r["sha256"] for r in _rows(full, "train")}
    kept = {r["sha256"] for r in _rows(semi, "train")}
    assert kept | {r["sha256"] for r in unlabelled} == train_hashes and len(kept) == sum(
        expected.values())
    for split in ("val", "test"):
        assert _rows(semi, split) == _rows(full, split)
    # Unlabelled patches share train's patients; the dataset still checks out.
    assert set(semi.manifest.split("unlabelled").patients) <= set(
        semi.manifest.split("train").patients)
    assert check_dataset(semi)["unlabelled"] == semi.rows("unlabelled")
    assert semi.manifest.source["semi_supervised"]["labelled_fraction"] == 0.2
