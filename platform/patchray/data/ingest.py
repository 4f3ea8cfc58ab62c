"""Write patch records to a split Parquet dataset with a manifest.

Layout under ``root`` (local path or ``s3://``)::

    root/train/part-00000.parquet ...   rows of PATCH_SCHEMA
    root/val/...  root/test/...  root/unlabelled/... (label-free ingests only)
    root/ingest_report.json, .csv       what was rejected and why (ingest_source only)
    root/manifest.json                  schema version, encoding, counts, content hash

Files are named by their position in a deterministic order, so writing the same records
twice gives the same bytes; each file appears whole (temp name, then rename; an S3 PUT is
atomic), the old manifest is removed first and the new one written last, so a reader never
trusts a half-written dataset and a killed run is finished by running it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
from collections import Counter, deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from patchray import storage
from patchray.data.manifest import MANIFEST, Manifest, parse_manifest
from patchray.data.records import (
    ALL_SPLITS, PATCH_SCHEMA, ROW_GROUP_ROWS, SCHEMA_VERSION, SPLITS, UNLABELLED, check_encoding,
    encode_pixels, label_key, patch_schema, pixel_sha256,
)
from patchray.data.report import REPORT_JSON, IngestReport
from patchray.data.sources import Candidate, PatchSource, SyntheticSource
from patchray.data.splits import (
    assign_patient_splits, check_patient_disjoint, check_split_map, count_patients,
)
from patchray.errors import ConfigError, DataError


def patch_record(
    pixels: np.ndarray, *, label: int | None, patient_id: str, slide_id: str, x: int, y: int,
    source: str, sha256: str | None = None, encoding: str = "png",
) -> dict[str, Any]:
    """One PATCH_SCHEMA row: the pixels re-encoded (PNG or raw), whatever the source format,
    so a dataset holds one encoding. ``sha256`` is of the pixels, the same for either."""
    h, w = pixels.shape[:2]
    return encoded_record(
        encode_pixels(pixels, encoding), h, w, label=label, patient_id=patient_id,
        slide_id=slide_id, x=x, y=y, source=source, sha256=sha256 or pixel_sha256(pixels),
    )


def encoded_record(
    image: bytes, height: int, width: int, *, label: int | None, patient_id: str,
    slide_id: str, x: int, y: int, source: str, sha256: str,
    views: Mapping[str, bytes] | None = None,
) -> dict[str, Any]:
    """A PATCH_SCHEMA row from already encoded pixels; ``views``: extra image columns
    (``context_image`` of a multi-scale dataset), encoded like ``image``."""
    return {
        "image": image,
        "label": None if label is None else int(label),
        "patient_id": patient_id,
        "slide_id": slide_id,
        "x": int(x),
        "y": int(y),
        "height": int(height),
        "width": int(width),
        "source": source,
        "sha256": sha256,
        **(views or {}),
    }


# --------------------------------------------------------------------------- writing


def _write_table(rows: list[dict], uri: str, schema: pa.Schema = PATCH_SCHEMA) -> None:
    """Write one Parquet file whole: readers see all of it or none of it."""
    table = pa.Table.from_pylist(rows, schema=schema)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf, row_group_size=ROW_GROUP_ROWS, write_page_checksum=True)
    storage.write_bytes(uri, buf.getvalue().to_pybytes())


class SplitWriter:
    """Streams one split's records into ``part-NNNNN.parquet`` files of ``rows_per_file``
    rows, so at most one file's worth of patches is in memory."""

    def __init__(self, root: str, split: str, rows_per_file: int, digest: Any,
                 schema: pa.Schema = PATCH_SCHEMA) -> None:
        self.root, self.split, self.rows_per_file, self.digest = root, split, rows_per_file, digest
        self.schema = schema
        self.buffer: list[dict] = []
        self.files: list[str] = []
        self.labels: Counter[str] = Counter()
        self.patients: Counter[str] = Counter()

    def add(self, record: dict[str, Any]) -> None:
        self.buffer.append(record)
        self.labels[label_key(record["label"])] += 1
        self.patients[record["patient_id"]] += 1
        self.digest.update(record["sha256"].encode())
        if len(self.buffer) >= self.rows_per_file:
            self.flush()

    def flush(self) -> None:
        if self.buffer:
            name = f"{self.split}/part-{len(self.files):05d}.parquet"
            uri = storage.join(self.root, name)
            if self.schema is PATCH_SCHEMA:  # the single-view call, as it always was
                _write_table(self.buffer, uri)
            else:
                _write_table(self.buffer, uri, self.schema)
            self.files.append(name)
            self.buffer = []

    def finish(self) -> dict[str, Any]:
        """Flush the last file; return the split's manifest entry."""
        self.flush()
        return {
            "files": list(self.files),
            "rows": sum(self.patients.values()),
            "labels": dict(sorted(self.labels.items())),
            "patients": dict(sorted(self.patients.items())),
        }


def begin_dataset(root: str) -> None:
    """Remove the old manifest first: until the new one exists, the dataset is unfinished."""
    storage.delete(storage.join(root, MANIFEST), missing_ok=True)  # StorageError, not OSError


def remove_stale_parts(root: str, keep: Iterable[str]) -> list[str]:
    """Delete part files (and temp files of a killed run) this write did not produce.

    A reader of a split folder must find exactly the manifest's files, also when an earlier
    run with other settings wrote more of them."""
    keep = set(keep)
    fs, base = storage.resolve(root)
    removed = []
    for split in ALL_SPLITS:
        selector = pafs.FileSelector(f"{base}/{split}", allow_not_found=True)
        for info in fs.get_file_info(selector):
            name = f"{split}/{info.base_name}"
            is_part = info.type == pafs.FileType.File and info.base_name.startswith("part-")
            if is_part and name not in keep:
                fs.delete_file(info.path)
                removed.append(name)
    return removed


def finish_dataset(
    root: str, splits: Mapping[str, dict[str, Any]], manifest: dict[str, Any], *, encoding: str
) -> Manifest:
    """Check patients are disjoint, drop stale files, and write the manifest last."""
    check_patient_disjoint({s: set(v["patients"]) for s, v in splits.items()})
    doc = {"schema_version": SCHEMA_VERSION, "encoding": encoding, "splits": dict(splits),
           **manifest}
    typed = parse_manifest(doc, where=storage.join(root, MANIFEST))  # what readers will see
    remove_stale_parts(root, [f for v in splits.values() for f in v["files"]])
    storage.write_json(storage.join(root, MANIFEST), typed.to_json())
    return typed


# --------------------------------------------------------------------------- ingest

INGEST_CHUNK = 256  # candidates per worker task: amortises pickling, bounds memory per task


@dataclass(frozen=True)
class Prepared:
    """One candidate after decoding: its encoded image, or the reason it was refused."""

    cand: Candidate
    image: bytes | None = None
    shape: tuple[int, int] | None = None
    sha256: str | None = None
    reason: str | None = None
    views: dict[str, bytes] = dataclasses.field(default_factory=dict)  # extra image columns


def source_views(source: Any) -> tuple[str, ...]:
    """The extra image columns a source's records carry: ``view_columns`` of a source that
    reads more than one view per patch (``read_views``, e.g.
    :class:`patchray.slides.multiscale.MultiScaleSource`), else none."""
    return tuple(getattr(source, "view_columns", ()) or ())


def prepare_chunk(source: PatchSource, chunk: list[Candidate], encoding: str) -> list[Prepared]:
    """Decode, hash and re-encode a chunk of candidates (the costly part; runs in a worker)."""
    out = []
    if source_views(source):
        for cand, pixels, views, reason in source.read_views(chunk):  # type: ignore[attr-defined]
            if pixels is None:
                out.append(Prepared(cand, reason=str(reason)))
            else:
                out.append(Prepared(cand, encode_pixels(pixels, encoding), pixels.shape[:2],
                                    pixel_sha256(pixels),
                                    views={k: encode_pixels(v, encoding) for k, v in views.items()}))
        return out
    for cand, pixels, reason in source.read_pixels(chunk):
        if pixels is None:
            out.append(Prepared(cand, reason=str(reason)))
        else:
            out.append(Prepared(cand, encode_pixels(pixels, encoding), pixels.shape[:2],
                                pixel_sha256(pixels)))
    return out


def prepared_patches(
    source: PatchSource, ordered: list[Candidate], encoding: str, workers: int
) -> Iterator[Prepared]:
    """:func:`prepare_chunk` over ``ordered`` in ``workers`` processes, yielded in order (so
    the output does not depend on ``workers``), with at most 2 chunks per worker in flight."""
    chunks = (ordered[i : i + INGEST_CHUNK] for i in range(0, len(ordered), INGEST_CHUNK))
    if workers <= 1:
        for chunk in chunks:
            yield from prepare_chunk(source, chunk, encoding)
        return
    # spawn, not fork: the parent may hold pyarrow/S3 threads that a fork would copy mid-state.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        pending: deque[Any] = deque()
        for chunk in chunks:
            pending.append(pool.submit(prepare_chunk, source, chunk, encoding))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()



@dataclass(frozen=True)
class IngestResult:
    manifest: Manifest
    report: IngestReport


def choose_splits(
    candidates: list[Candidate],
    *,
    official: bool,
    split_map: Mapping[str, str] | None,
    train: float,
    val: float,
    seed: int,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Patient -> split, and the rule that chose it (recorded in the manifest)."""
    patients = count_patients((c.patient_id, c.label) for c in candidates)
    if any(c.label is None for c in candidates):
        if split_map:
            raise ConfigError("--split-map: unlabelled patches all go to the 'unlabelled' split")
        return {p: UNLABELLED for p in patients}, {"by": "none", "split": UNLABELLED}
    if official:
        if split_map:
            raise ConfigError("--split-map: this source keeps its official splits")
        return {c.patient_id: str(c.split) for c in candidates}, {"by": "official"}
    if split_map:
        check_split_map(split_map, set(patients))
        return dict(split_map), {"by": "explicit", "patients": dict(sorted(split_map.items()))}
    if len(patients) < 3:
        raise DataError(
            f"{len(patients)} patient(s) ({', '.join(sorted(patients))}) cannot be split into "
            "train/val/test by patient; assign them yourself with --split-map "
            "PATIENT=train|val|test,... (e.g. --split-map "
            + ",".join(f"{p}={s}" for p, s in zip(sorted(patients), SPLITS)) + ")"
        )
    split_of = assign_patient_splits(patients, train=train, val=val, seed=seed)
    return split_of, {"by": "patient", "train": train, "val": val, "seed": seed}


def count_undersized(
    sizes: Counter[tuple[int, int]], nominal: tuple[int, int] | None
) -> tuple[int, tuple[int, int] | None]:
    """Patches smaller than the source's full patch size (the most common size if unknown)."""
    if nominal is None and sizes:
        nominal = sizes.most_common(1)[0][0]
    if nominal is None:
        return 0, None
    return sum(n for (h, w), n in sizes.items() if h < nominal[0] or w < nominal[1]), nominal


def ingest_source(
    source: PatchSource,
    root: str,
    *,
    train: float = 0.6,
    val: float = 0.2,
    seed: int = 0,
    rows_per_file: int = 2000,
    split_map: Mapping[str, str] | None = None,
    encoding: str = "png",
    workers: int = 1,
) -> IngestResult:
    """Stream ``source`` into a split Parquet dataset at ``root``; return manifest and report.
    ``encoding`` is how the image column stores pixels (see :mod:`patchray.data.records`);
    ``workers`` processes decode and encode (the output is the same for any number).

    First pass: list candidates and assign patients to splits. Second pass: decode each
    candidate in (split, patient, y, x) order, refuse bad or duplicate pixels with a reason,
    and stream records to per-split writers. Running it again gives the same bytes.
    """
    check_encoding(encoding, where="--encoding")
    scan = source.scan()
    report = IngestReport(rejected=list(scan.rejected), ignored=list(scan.ignored))
    report.seen = len(scan.candidates) + len(scan.rejected)
    if not scan.candidates:  # nothing written: an existing dataset at root stays as it was
        examples = "".join(f"\n  {f}: {r}" for f, r in scan.rejected[:5])
        found = f"{report.seen} inputs, all rejected" if report.seen else "no patch files found"
        raise DataError(
            f"{source.root}: nothing to ingest ({found}) - is it a `{source.kind}` source?"
            + examples
        )
    split_of, rule = choose_splits(scan.candidates, official=source.official_splits,
                                   split_map=split_map, train=train, val=val, seed=seed)
    ordered = sorted(
        (dataclasses.replace(c, split=split_of[c.patient_id]) for c in scan.candidates),
        key=lambda c: (ALL_SPLITS.index(c.split), c.patient_id, c.y, c.x, c.index, c.source),
    )
    del scan

    begin_dataset(root)
    digest = hashlib.sha256()
    views = source_views(source)
    schema = patch_schema(views)
    writers = {s: SplitWriter(root, s, rows_per_file, digest, schema) for s in ALL_SPLITS}
    first_of: dict[str, str] = {}  # pixel hash -> source that wrote it
    sizes: Counter[tuple[int, int]] = Counter()
    for p in prepared_patches(source, ordered, encoding, workers):
        cand = p.cand
        if p.image is None or p.shape is None or p.sha256 is None:
            report.reject(cand.source, str(p.reason))
            continue
        first = first_of.setdefault(p.sha256, cand.source)
        if first != cand.source:
            report.reject(cand.source, f"duplicate of {first}")
            continue
        sizes[p.shape] += 1
        writers[str(cand.split)].add(encoded_record(
            p.image, *p.shape, label=cand.label, patient_id=cand.patient_id,
            slide_id=cand.slide_id, x=cand.x, y=cand.y, source=cand.source, sha256=p.sha256,
            views=p.views,
        ))
    finished = {s: w.finish() for s, w in writers.items()}
    splits = {s: v for s, v in finished.items() if s in SPLITS or v["rows"]}
    report.written = sum(v["rows"] for v in splits.values())
    report.write(root)
    if report.written == 0:
        raise DataError(
            f"{source.root}: every one of {report.seen} inputs was rejected; see "
            f"{storage.join(root, REPORT_JSON)}"
        )
    undersized, nominal = count_undersized(sizes, source.nominal_size)
    # Only multi-scale sources add keys: every other manifest stays byte-for-byte as it was.
    extra = ({"views": list(views), "context_scale": float(source.context_scale)}  # type: ignore[attr-defined]
             if views else {})
    manifest = finish_dataset(root, splits, {
        **extra,
        "dataset": source.kind,
        "source": source.describe(),
        "split_rule": rule,
        "content_sha256": digest.hexdigest(),
        "class_names": source.class_names,
        "counts": report.counts(),
        "nominal_size": list(nominal) if nominal else None,
        "undersized_patches": undersized,
        "patch_sizes": {f"{h}x{w}": n for (h, w), n in sorted(sizes.items())},
        "report": REPORT_JSON,
    }, encoding=encoding)
    return IngestResult(manifest, report)


def ingest_synthetic(data: Any, root: str, *, workers: int = 1) -> Manifest:
    """Generate the synthetic patches ``data.synthetic`` describes and ingest them to ``root``
    with ``data``'s split, file size and encoding (``data``: a DataConfig)."""
    syn = data.synthetic
    source = SyntheticSource(syn.num_patients, syn.patches_per_patient, size=syn.patch_size,
                             positive_fraction=syn.positive_fraction, seed=syn.seed)
    return ingest_source(source, root, train=data.split.train, val=data.split.val,
                         seed=data.split.seed, rows_per_file=data.rows_per_file,
                         encoding=data.encoding, workers=workers).manifest
