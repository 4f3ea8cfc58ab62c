"""Write patch records to a split Parquet dataset with a manifest.

Layout under ``root`` (local path or ``s3://``)::

    root/train/part-00000.parquet ...   rows of PATCH_SCHEMA
    root/val/...  root/test/...
    root/manifest.json                  schema version, counts, content hash

Files are named by their position, so writing the same records twice gives the same files;
the manifest is written last, so a reader never trusts a half-written dataset.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from patchray import storage
from patchray.data.records import PATCH_SCHEMA, SCHEMA_VERSION, SPLITS, encode_png, pixel_sha256
from patchray.data.splits import assign_patient_splits, check_patient_disjoint
from patchray.errors import DataError

MANIFEST = "manifest.json"
ROW_GROUP_ROWS = 512  # ~1-2 MB of 50x50 PNGs: small enough to stream, large enough to scan


def synthetic_records(patches: Iterable[Any], *, source: str = "synthetic") -> Iterable[dict]:
    """Turn :class:`patchray.data.synthetic.SyntheticPatch` objects into patch records."""
    for p in patches:
        h, w = p.pixels.shape[:2]
        yield {
            "image": encode_png(p.pixels),
            "label": int(p.label),
            "patient_id": p.patient_id,
            "slide_id": p.patient_id,
            "x": int(p.x),
            "y": int(p.y),
            "height": int(h),
            "width": int(w),
            "source": source,
            "sha256": pixel_sha256(p.pixels),
        }


def _write_table(rows: list[dict], uri: str) -> None:
    table = pa.Table.from_pylist(rows, schema=PATCH_SCHEMA)
    fs, path = storage.resolve(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    tmp = path + ".inprogress"  # Ray Data ignores non-.parquet names, so readers skip it
    pq.write_table(
        table, tmp, filesystem=fs, row_group_size=ROW_GROUP_ROWS, write_page_checksum=True
    )
    fs.move(tmp, path)


def write_split_dataset(
    records: Iterable[dict],
    root: str,
    *,
    train: float = 0.6,
    val: float = 0.2,
    seed: int = 0,
    rows_per_file: int = 2000,
    extra_manifest: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Split ``records`` by patient and write them under ``root``; return the manifest.

    Records are held in memory per split; sources too large for that stream through
    ``patchray ingest`` instead.
    """
    rows = list(records)
    if not rows:
        raise DataError(f"no patch records to write to {root}")
    counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in rows:
        counts[r["patient_id"]][0] += 1
        counts[r["patient_id"]][1] += int(r["label"] == 1)
    split_of = assign_patient_splits(
        {p: (n, pos) for p, (n, pos) in counts.items()}, train=train, val=val, seed=seed
    )
    by_split: dict[str, list[dict]] = {s: [] for s in SPLITS}
    for r in rows:
        by_split[split_of[r["patient_id"]]].append(r)
    check_patient_disjoint({s: {r["patient_id"] for r in rs} for s, rs in by_split.items()})

    digest = hashlib.sha256()
    manifest_splits: dict[str, Any] = {}
    for split, split_rows in by_split.items():
        split_rows.sort(key=lambda r: (r["patient_id"], r["y"], r["x"], r["sha256"]))
        files = []
        for i in range(0, len(split_rows), rows_per_file):
            name = f"{split}/part-{i // rows_per_file:05d}.parquet"
            _write_table(split_rows[i : i + rows_per_file], storage.join(root, name))
            files.append(name)
        for r in split_rows:
            digest.update(r["sha256"].encode())
        manifest_splits[split] = {
            "files": files,
            "rows": len(split_rows),
            "labels": dict(sorted(Counter(str(r["label"]) for r in split_rows).items())),
            "patients": dict(sorted(Counter(r["patient_id"] for r in split_rows).items())),
        }
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "splits": manifest_splits,
        "split_rule": {"by": "patient", "train": train, "val": val, "seed": seed},
        "content_sha256": digest.hexdigest(),
        **(extra_manifest or {}),
    }
    storage.write_json(storage.join(root, MANIFEST), manifest)
    return manifest


def read_manifest(root: str) -> dict[str, Any]:
    uri = storage.join(root, MANIFEST)
    if not storage.exists(uri):
        raise DataError(f"{uri} not found: {root} is not a patchray dataset (run ingest first)")
    manifest = storage.read_json(uri)
    if manifest.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{uri}: schema_version {manifest.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    return manifest
