"""Check a written dataset against its manifest, cheaply (footers) or fully (every page).

``patchray dataset show`` runs :func:`check_dataset`: every listed file exists, Parquet
footers agree with the manifest's row counts, no stray part file sits where a reader of the
split folder would pick it up, and no patient is in two splits. ``patchray dataset validate``
adds :func:`validate_dataset`: every page is read with its CRC checked (Ray Data 2.60's
``read_parquet`` cannot be asked to), and the labels, patients and content hash are
recounted from the rows themselves.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from patchray import storage
from patchray.data.manifest import PatchDataset
from patchray.data.records import ALL_SPLITS, ROW_GROUP_ROWS, label_key, patch_schema
from patchray.data.splits import check_patient_disjoint
from patchray.errors import DataError


def open_parquet(root: str, name: str) -> pq.ParquetFile:
    """Open one of the dataset's files with page checksum verification on."""
    uri = storage.join(root, name)
    fs, path = storage.resolve(uri)
    try:
        return pq.ParquetFile(fs.open_input_file(path), page_checksum_verification=True)
    except FileNotFoundError as e:
        raise DataError(f"{uri}: listed in the manifest but missing") from e
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a damaged footer
        raise DataError(f"{uri}: not a readable Parquet file ({e})") from e


def check_dataset(dataset: PatchDataset) -> dict[str, int]:
    """Cheap consistency checks; return the Parquet footers' row count per split."""
    root, splits = dataset.root, dataset.manifest.splits
    check_patient_disjoint({s: set(v.patients) for s, v in splits.items()})
    rows: Counter[str] = Counter({s: 0 for s in splits})
    schema = patch_schema(dataset.views)  # PATCH_SCHEMA, plus a multi-scale dataset's views
    for split, name in dataset.files():
        pf = open_parquet(root, name)
        if not pf.schema_arrow.equals(schema):
            raise DataError(
                f"{storage.join(root, name)}: schema {pf.schema_arrow} is not PATCH_SCHEMA"
                + (f" with {', '.join(dataset.views)}" if dataset.views else "")
            )
        rows[split] += pf.metadata.num_rows
    for split, info in splits.items():
        if rows[split] != info.rows:
            raise DataError(
                f"{storage.join(root, split)}: Parquet files hold {rows[split]} rows, the "
                f"manifest says {info.rows}"
            )
    listed = {name for _, name in dataset.files()}
    stray = sorted(set(part_files(root)) - listed)
    if stray:
        raise DataError(
            f"{root}: part files not in the manifest (a reader of the split folder would read "
            f"them): {', '.join(stray[:10])}; re-run the ingest to clean them up"
        )
    return dict(rows)


def part_files(root: str) -> list[str]:
    """Every ``<split>/part-*`` file actually present under ``root``."""
    fs, base = storage.resolve(root)
    found = []
    for split in ALL_SPLITS:
        for info in fs.get_file_info(pafs.FileSelector(f"{base}/{split}", allow_not_found=True)):
            if info.type == pafs.FileType.File and info.base_name.startswith("part-"):
                found.append(f"{split}/{info.base_name}")
    return found


def read_verified(root: str, name: str, columns: list[str]) -> Iterator[Any]:
    """Record batches of one file, a row group at a time, every page's CRC checked."""
    pf = open_parquet(root, name)
    try:
        yield from pf.iter_batches(batch_size=ROW_GROUP_ROWS, columns=columns)
    except OSError as e:  # pyarrow's "CRC checksum verification failed for page ..."
        raise DataError(f"{storage.join(root, name)}: {e}") from e


VALIDATE_COLUMNS = ["label", "patient_id", "sha256", "image", "height", "width", "source"]


def check_raw_lengths(uri: str, batch: Any) -> None:
    """A raw image is exactly height x width x 3 bytes; anything else is not that patch."""
    lengths = pc.binary_length(batch.column("image")).to_numpy()
    expected = (batch.column("height").to_numpy().astype(np.int64)
                * batch.column("width").to_numpy().astype(np.int64) * 3)
    bad = np.flatnonzero(lengths != expected)
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{uri}: {bad.size} raw images of the wrong length, first "
                        f"{batch.column('source')[i]}: {lengths[i]} bytes, expected {expected[i]}")


def validate_dataset(root: str) -> dict[str, Any]:
    """Full check: every page's CRC, and counts and content hash recomputed from the rows."""
    dataset = PatchDataset.open(root)
    manifest = dataset.manifest
    check_dataset(dataset)
    digest = hashlib.sha256()
    recount: dict[str, dict[str, Counter[str]]] = {}
    for split, name in dataset.files():
        counts = recount.setdefault(split, {"labels": Counter(), "patients": Counter()})
        for batch in read_verified(root, name, VALIDATE_COLUMNS):
            if manifest.encoding == "raw":
                check_raw_lengths(storage.join(root, name), batch)
            counts["labels"].update(label_key(v) for v in batch.column("label").to_pylist())
            counts["patients"].update(batch.column("patient_id").to_pylist())
            for sha in batch.column("sha256").to_pylist():
                digest.update(sha.encode())
    for split, info in manifest.splits.items():
        got = recount.get(split, {"labels": Counter(), "patients": Counter()})
        for key in ("labels", "patients"):
            listed = getattr(info, key)
            if dict(got[key]) != {k: v for k, v in listed.items() if v}:
                raise DataError(f"{root}: {split} {key} in the rows {dict(got[key])} differ from "
                                f"the manifest's {listed}")
    if digest.hexdigest() != manifest.content_sha256:
        raise DataError(f"{root}: content hash of the rows {digest.hexdigest()} differs from the "
                        f"manifest's {manifest.content_sha256}")
    return {
        "files": len(dataset.files()),
        "rows": sum(v.rows for v in manifest.splits.values()),
        "content_sha256": digest.hexdigest(),
    }
