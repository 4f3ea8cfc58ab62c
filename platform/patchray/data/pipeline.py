"""Ray Data: stream a split of a patchray dataset, decoded and augmented, to training workers.

The logic lives in :mod:`patchray.data.transforms`; this module only wires it into
``read_parquet`` and ``map_batches`` so it runs in parallel and streams, never materialising
the dataset on the driver.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any, NoReturn

from patchray.data.manifest import PatchDataset, holdout_rows
from patchray.data.records import UNLABELLED, patch_schema
from patchray.data.transforms import class_weights, prepare_training_batch
from patchray.errors import DataError

READ_COLUMNS = ["image", "label"]
RAW_SHAPE_COLUMNS = ["height", "width"]  # a raw patch's bytes carry no shape


def read_split(
    dataset: PatchDataset, split: str, *, columns: list[str] | None = None,
    parquet_reader: str = "v1", val_holdout: float = 0.0, views: list[str] | None = None,
) -> Any:
    """A lazy Ray Dataset over one split (train/val/test) of ``dataset``.

    Reads ``image`` and ``label`` (plus ``height``/``width`` for raw-encoded datasets, and
    the extra image columns ``views``, default: all the dataset has, e.g. a multi-scale
    dataset's ``context_image``) unless ``columns`` says otherwise. With the ``v1`` reader
    every Parquet page's CRC is verified as it is read, so a corrupted file fails the read
    instead of training on garbage. Ray 2.60's ``v2`` reader drops pyarrow's scan options,
    so there only ``patchray dataset validate`` checks the pages. ``val_holdout``: see
    :meth:`PatchDataset.resolve`.
    """
    stored, held_out = dataset.resolve(split, val_holdout)
    fs, paths = dataset.split_files(stored)
    if columns is None:
        columns = READ_COLUMNS + (RAW_SHAPE_COLUMNS if dataset.encoding == "raw" else [])
        missing = [v for v in views or () if v not in dataset.views]
        if missing:
            raise DataError(f"{dataset.root}: has no {', '.join(missing)} column (views: "
                            f"{list(dataset.views) or 'none'}); a multi-scale model trains "
                            "on a dataset from patchray.slides.multiscale")
        columns += list(dataset.views if views is None else views)
    schema = patch_schema(dataset.views)
    if held_out is None:
        return _read_parquet(paths, fs, columns, parquet_reader, schema)
    ds = _read_parquet(paths, fs, sorted({*columns, "sha256"}), parquet_reader, schema)
    part = functools.partial(_holdout_part, fraction=val_holdout, held_out=held_out,
                             columns=columns)
    return ds.map_batches(part, batch_format="pyarrow")


def _holdout_part(table: Any, *, fraction: float, held_out: bool, columns: list[str]) -> Any:
    return holdout_rows(table, fraction, held_out).select(columns)


def _read_parquet(paths: list[str], fs: Any, columns: list[str], parquet_reader: str,
                  schema: Any) -> Any:
    import pyarrow.dataset as pds
    import ray.data

    with use_parquet_reader(parquet_reader):
        if parquet_reader == "v2":  # v2 deprecates columns= in favour of a projection
            ds = ray.data.read_parquet(paths, filesystem=fs, schema=schema)
            return ds.select_columns(columns)
        # Ray's own defaults (buffered 8 MiB reads) plus the checksum check; Ray keeps a
        # user-supplied fragment_scan_options instead of its own.
        verified = pds.ParquetFragmentScanOptions(
            use_buffered_stream=True, buffer_size=8 << 20, page_checksum_verification=True
        )
        return ray.data.read_parquet(paths, filesystem=fs, columns=columns, schema=schema,
                                     fragment_scan_options=verified)


CHECKSUM_FAILURE = "CRC checksum verification failed"  # pyarrow's message for a bad page


def raise_explained(error: BaseException, root: str) -> NoReturn:
    """Re-raise an error from reading ``root``. A corrupted page fails deep inside a Ray task
    whose error names no file: that one becomes a DataError saying which dataset, and how to
    find the file (chained to the original). Other errors are raised unchanged."""
    explained = checksum_error(error, root)
    if explained is None:
        raise error
    raise explained from error


def checksum_error(error: BaseException, root: str) -> DataError | None:
    """The DataError for ``error`` if it is a failed page checksum while reading ``root``."""
    text = str(error)
    if CHECKSUM_FAILURE not in text:
        return None
    detail = next((line.strip() for line in text.splitlines() if CHECKSUM_FAILURE in line), "")
    return DataError(
        f"{root}: a Parquet page failed its checksum while it was read ({detail}); run "
        f"`patchray dataset validate {root}` to find the file, then re-ingest it"
    )


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
    dataset: PatchDataset,
    split: str,
    *,
    preprocess: Any,
    augment: bool,
    augment_strength: float = 1.0,
    stain_augment: float = 0.0,
    weighting: str = "none",
    batch_size: int = 256,
    parquet_reader: str = "v1",
    val_holdout: float = 0.0,
    semi_supervised: bool = False,
) -> Any:
    """Split ``split`` as a Ray Dataset of ``x`` (uint8 NHWC patches, decoded, fitted and
    padded by ``preprocess``, a Preprocess; the training worker scales them), ``y`` (label)
    and ``w`` (sample weight, ``weighting`` of train's label counts); for a multi-scale
    contract (``preprocess.context_scale``) also ``context``, augmented like ``x``.
    ``semi_supervised``: the train split also reads the ``unlabelled`` one (``y`` -1, ``w`` 0)."""
    weights = class_weights(dataset.label_counts("train"), weighting)
    encoding = dataset.encoding
    # Fresh entropy per batch (seed=None): a fixed seed would repeat the same augmentation
    # every epoch, and Ray Data's streaming order is not repeatable anyway.
    prepare = functools.partial(
        prepare_training_batch, size=preprocess.size, augment_patches=augment, weights=weights,
        augment_strength=augment_strength, seed=None, encoding=encoding, pad_value=preprocess.pad_value,
        # The contract's stain normalisation runs here, before augmentation; the worker
        # then scales with stain_normalised=True (patchray.training.loop.batch_inputs).
        stain=getattr(preprocess, "stain", None), stain_augment=stain_augment,
    )
    ds = read_split(dataset, split, parquet_reader=parquet_reader, val_holdout=val_holdout,
                    views=contract_views(preprocess))
    if semi_supervised and split == "train" and dataset.rows(UNLABELLED):
        # A semi-supervised model (ModelInfo.semi_supervised) also trains on the unlabelled
        # split (label -1, weight 0 after prepare_training_batch). Files are written by
        # patient, labelled ones first: without a shuffle most batches would hold one kind
        # only. random_shuffle re-runs every epoch (a fresh order); it is an all-to-all
        # exchange, affordable for the datasets patchray trains on one machine.
        unlabelled = read_split(dataset, UNLABELLED, parquet_reader=parquet_reader,
                                views=contract_views(preprocess))
        ds = ds.union(unlabelled).random_shuffle()
    return ds.map_batches(
        prepare, batch_format="numpy", batch_size=batch_size
    )


def contract_views(preprocess: Any) -> list[str]:
    """The extra image columns a model with this contract reads: ``context_image`` for a
    multi-scale one (``context_scale`` set), none otherwise."""
    return ["context_image"] if getattr(preprocess, "context_scale", None) else []
