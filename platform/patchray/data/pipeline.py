"""Ray Data: stream a split of a patchray dataset, decoded and augmented, to training workers.

The logic lives in :mod:`patchray.data.transforms`; this module only wires it into
``read_parquet`` and ``map_batches`` so it runs in parallel and streams, never materialising
the dataset on the driver.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator, Sequence
from typing import Any, NoReturn

import numpy as np

from patchray import storage
from patchray.data.ingest import read_manifest
from patchray.data.records import PATCH_SCHEMA
from patchray.data.transforms import class_weights, prepare_training_batch
from patchray.errors import ConfigError, DataError

READ_COLUMNS = ["image", "label"]
RAW_SHAPE_COLUMNS = ["height", "width"]  # a raw patch's bytes carry no shape


HOLDOUT_BUCKETS = 1000


def in_holdout(sha256: Sequence[str], fraction: float) -> np.ndarray:
    """Which rows of train are held out for validation (``data.val_holdout``).

    Chosen by the pixel hash, so every reader (training, export, scoring) and every run
    picks the same rows, whatever the file layout or read order."""
    buckets = np.fromiter((int(s[:8], 16) % HOLDOUT_BUCKETS for s in sha256), dtype=np.int64,
                          count=len(sha256))
    return buckets < round(fraction * HOLDOUT_BUCKETS)


def resolve_split(
    root: str, split: str, val_holdout: float = 0.0, *, manifest: dict[str, Any] | None = None
) -> tuple[str, bool | None]:
    """The stored split that ``split`` reads, and whether it takes train's held-out rows
    (True), the rest (False) or all rows (None).

    ``val_holdout`` is for datasets without val patients (two patients: one to train on, one
    to test on). Validation then shares patients with training and its metrics are
    optimistic; the test patients stay untouched."""
    if val_holdout <= 0:
        return split, None
    manifest = manifest or read_manifest(root)
    if manifest["splits"].get("val", {}).get("rows", 0):
        raise ConfigError(
            f"data.val_holdout={val_holdout}: {root} has val patients; hold-out validation is "
            "only for datasets without a val split (set data.val_holdout=0)"
        )
    if split in ("train", "val"):
        return "train", split == "val"
    return split, None


def split_files(
    root: str, split: str, *, manifest: dict[str, Any] | None = None
) -> tuple[Any, list[str], str]:
    """(filesystem, paths, encoding) of one split: exactly the files the manifest lists, so a
    stray or half-copied file in the folder never leaks into training."""
    manifest = manifest or read_manifest(root)
    files = manifest["splits"].get(split, {}).get("files", [])
    if not files:
        hint = (" (a dataset without val patients needs hold-out validation: "
                "--set data.val_holdout=0.2)" if split == "val" else "")
        raise DataError(f"{root}: split {split!r} has no files in manifest.json{hint}")
    fs, _ = storage.resolve(root)
    paths = [storage.resolve(storage.join(root, name))[1] for name in files]
    return fs, paths, manifest["encoding"]


def read_split(
    root: str, split: str, *, columns: list[str] | None = None, parquet_reader: str = "v1",
    val_holdout: float = 0.0,
) -> Any:
    """A lazy Ray Dataset over one split (train/val/test) of the dataset at ``root``.

    Reads ``image`` and ``label`` (plus ``height``/``width`` for raw-encoded datasets) unless
    ``columns`` says otherwise. With the ``v1`` reader every Parquet page's CRC is verified as
    it is read, so a corrupted file fails the read instead of training on garbage. Ray 2.60's
    ``v2`` reader drops pyarrow's scan options, so there only ``patchray dataset validate``
    checks the pages. ``val_holdout``: see :func:`resolve_split`.
    """
    manifest = read_manifest(root)  # once: on s3:// every read is a request
    stored, held_out = resolve_split(root, split, val_holdout, manifest=manifest)
    fs, paths, encoding = split_files(root, stored, manifest=manifest)
    if columns is None:
        columns = READ_COLUMNS + (RAW_SHAPE_COLUMNS if encoding == "raw" else [])
    if held_out is None:
        return _read_parquet(paths, fs, columns, parquet_reader)
    ds = _read_parquet(paths, fs, sorted({*columns, "sha256"}), parquet_reader)
    part = functools.partial(_holdout_part, fraction=val_holdout, held_out=held_out,
                             columns=columns)
    return ds.map_batches(part, batch_format="pyarrow")


def holdout_rows(table: Any, fraction: float, held_out: bool) -> Any:
    """The held-out rows of a pyarrow table of train (``held_out``), or the rest."""
    mask = in_holdout(table.column("sha256").to_pylist(), fraction)
    return table.filter(mask if held_out else ~mask)


def _holdout_part(table: Any, *, fraction: float, held_out: bool, columns: list[str]) -> Any:
    return holdout_rows(table, fraction, held_out).select(columns)


def _read_parquet(paths: list[str], fs: Any, columns: list[str], parquet_reader: str) -> Any:
    import pyarrow.dataset as pds
    import ray.data

    with use_parquet_reader(parquet_reader):
        if parquet_reader == "v2":  # v2 deprecates columns= in favour of a projection
            ds = ray.data.read_parquet(paths, filesystem=fs, schema=PATCH_SCHEMA)
            return ds.select_columns(columns)
        # Ray's own defaults (buffered 8 MiB reads) plus the checksum check; Ray keeps a
        # user-supplied fragment_scan_options instead of its own.
        verified = pds.ParquetFragmentScanOptions(
            use_buffered_stream=True, buffer_size=8 << 20, page_checksum_verification=True
        )
        return ray.data.read_parquet(paths, filesystem=fs, columns=columns, schema=PATCH_SCHEMA,
                                     fragment_scan_options=verified)


CHECKSUM_FAILURE = "CRC checksum verification failed"  # pyarrow's message for a bad page


def raise_explained(error: BaseException, root: str) -> NoReturn:
    """Re-raise an error from reading ``root``. A corrupted page fails deep inside a Ray task
    whose error names no file: that one becomes a DataError saying which dataset, and how to
    find the file (chained to the original). Other errors are raised unchanged."""
    text = str(error)
    if CHECKSUM_FAILURE not in text:
        raise error
    detail = next((line.strip() for line in text.splitlines() if CHECKSUM_FAILURE in line), "")
    raise DataError(
        f"{root}: a Parquet page failed its checksum while it was read ({detail}); run "
        f"`patchray dataset validate {root}` to find the file, then re-ingest it"
    ) from error


PARQUET_READERS = ("v1", "v2")


@contextlib.contextmanager
def use_parquet_reader(version: str) -> Iterator[None]:
    """Pick Ray Data's Parquet reader for datasets created inside (fixed at plan time).

    patchray defaults to ``v1``: Ray 2.60's default (datasource ``v2``) runs a file-listing
    task before the first block of every execution, i.e. every epoch, which delayed the
    first batch by 10-34 s vs 1.3-1.9 s for ``v1`` (``python -m patchray.benchmarks reader``).
    """
    import ray.data

    if version not in PARQUET_READERS:
        raise DataError(f"parquet_reader must be one of {PARQUET_READERS}, got {version!r}")
    ctx = ray.data.DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, version == "v2"
    try:
        yield
    finally:
        ctx.use_datasource_v2 = before


def training_dataset(
    root: str,
    split: str,
    *,
    size: int,
    augment: bool,
    label_counts: dict[str, int] | None = None,
    weighting: str = "none",
    batch_size: int = 256,
    parquet_reader: str = "v1",
    val_holdout: float = 0.0,
) -> Any:
    """Split ``split`` as a Ray Dataset of ``x`` (uint8 NHWC patches; the training worker
    scales them to [0, 1]), ``y`` (label) and ``w`` (sample weight)."""
    weights = class_weights(label_counts or {}, weighting)
    encoding = read_manifest(root)["encoding"]
    # Fresh entropy per batch (seed=None): a fixed seed would repeat the same augmentation
    # every epoch, and Ray Data's streaming order is not repeatable anyway.
    prepare = functools.partial(
        prepare_training_batch, size=size, augment_patches=augment, weights=weights, seed=None,
        encoding=encoding,
    )
    ds = read_split(root, split, parquet_reader=parquet_reader, val_holdout=val_holdout)
    return ds.map_batches(
        prepare, batch_format="numpy", batch_size=batch_size
    )
