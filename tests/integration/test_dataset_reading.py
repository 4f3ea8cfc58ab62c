"""Ray Data reading a split: both layouts deliver the same patches, and corrupt pages fail."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from patchray.config import DataConfig
from patchray.data.ingest import ingest_synthetic
from patchray.data.manifest import PatchDataset
from patchray.data.pipeline import raise_explained, read_split, training_dataset
from patchray.errors import DataError
from patchray.inference.preprocess import Preprocess

pytestmark = pytest.mark.integration


def _dataset(root: Path, encoding: str) -> str:
    data = DataConfig.model_validate({
        "encoding": encoding, "rows_per_file": 16,
        "synthetic": {"num_patients": 3, "patches_per_patient": 24, "patch_size": 40},
    })
    ingest_synthetic(data, str(root))
    return str(root)


def _patches(root: str, size: int) -> list[tuple[bytes, float]]:
    ds = training_dataset(PatchDataset.open(root), "train", preprocess=Preprocess(size=size),
                          augment=False, batch_size=7)
    out = []
    for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
        assert b["x"].dtype == np.uint8 and b["x"].shape[1:] == (size, size, 3)
        out += [(x.tobytes(), float(y)) for x, y in zip(b["x"], b["y"])]
    return sorted(out)


def test_raw_and_png_layouts_stream_identical_patches(ray_cluster, tmp_path):
    png, raw = _dataset(tmp_path / "png", "png"), _dataset(tmp_path / "raw", "raw")
    assert json.loads((tmp_path / "raw/manifest.json").read_text())["encoding"] == "raw"
    for size in (40, 48):  # native size, and padded to a larger model input
        from_png, from_raw = _patches(png, size), _patches(raw, size)
        assert len(from_png) == 24
        assert from_png == from_raw


def test_a_corrupted_page_fails_the_read_instead_of_training_on_garbage(ray_cluster, tmp_path):
    root = _dataset(tmp_path / "ds", "raw")
    manifest = json.loads((tmp_path / "ds/manifest.json").read_text())
    part = tmp_path / "ds" / manifest["splits"]["train"]["files"][0]
    data = bytearray(part.read_bytes())
    data[len(data) // 3] ^= 0xFF  # a flipped bit in an image page: still "valid" pixels
    part.write_bytes(bytes(data))
    with pytest.raises(Exception, match="CRC checksum verification failed") as failed:
        read_split(PatchDataset.open(root), "train").materialize()
    # What training and scoring raise instead: which dataset, and how to find the file.
    with pytest.raises(DataError, match=r"a Parquet page failed its checksum .*CRC checksum "
                       r"verification failed.*patchray dataset validate") as explained:
        raise_explained(failed.value, root)
    assert str(root) in str(explained.value) and explained.value.__cause__ is failed.value
    other = ValueError("something else")
    with pytest.raises(ValueError, match="something else"):
        raise_explained(other, root)
    # Ray's v2 reader cannot verify pages (it drops pyarrow's scan options): the corrupt
    # bytes come back as if they were pixels, which is why patchray reads with v1.
    unverified = read_split(PatchDataset.open(root), "train", parquet_reader="v2")
    assert sum(len(b["image"]) for b in unverified.iter_batches(batch_format="numpy")) == 24
