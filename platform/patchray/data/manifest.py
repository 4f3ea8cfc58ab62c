"""The dataset handle: a typed manifest, opened once, that every reader asks.

A patchray dataset is a root (local path or ``s3://``) with one folder of Parquet files per
split and a ``manifest.json`` (written last by :mod:`patchray.data.ingest`). Readers never
touch the JSON themselves: :meth:`PatchDataset.open` reads and validates it once (on
``s3://`` every read is a request) and the handle answers the questions training, scoring,
export, ``dataset show`` and ``dataset validate`` ask: encoding, split files, label counts,
class names, hold-out validation, a small sample, the content hash.

This module reads; it does not import the writer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from patchray import storage
from patchray.data.records import (
    ALL_SPLITS, ENCODINGS, SCHEMA_VERSION, SPLITS, check_encoding, decode_record_image, encode_png,
)
from patchray.errors import ConfigError, DataError, NotFoundError

MANIFEST = "manifest.json"
DEFAULT_CLASS_NAMES = {"0": "benign", "1": "tumour"}
HOLDOUT_BUCKETS = 1000


class _Doc(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SplitInfo(_Doc):
    """One split's entry: its files (relative to the root) and what they hold."""

    files: list[str] = []
    rows: int = Field(0, ge=0)
    labels: dict[str, int] = {}  # "0", "1", or "null" (unlabelled) -> patches
    patients: dict[str, int] = {}  # patient id -> patches


class IngestCounts(_Doc):
    seen: int
    written: int
    rejected: int
    ignored: int


class Manifest(_Doc):
    """``manifest.json``: every key patchray has ever written, typed."""

    schema_version: Literal[1]
    encoding: Literal[ENCODINGS] = "png"  # type: ignore[valid-type]
    splits: dict[str, SplitInfo]
    dataset: str = "patches"
    source: dict[str, Any] = {}
    split_rule: dict[str, Any] = {}
    content_sha256: str = ""
    class_names: dict[str, str] = Field(default_factory=lambda: dict(DEFAULT_CLASS_NAMES))
    counts: IngestCounts | None = None
    nominal_size: list[int] | None = None
    undersized_patches: int = 0
    patch_sizes: dict[str, int] = {}
    report: str | None = None
    synthetic: dict[str, Any] | None = None  # written by versions before the synthetic source
    # A multi-scale dataset (patchray.slides.multiscale): its extra image columns, and how
    # many times the patch's field of view the context view covers.
    views: list[Literal["context_image"]] = []
    context_scale: float | None = Field(None, gt=1.0)

    def split(self, name: str) -> SplitInfo:
        """A split's entry; an absent split is an empty one."""
        return self.splits.get(name, SplitInfo())

    def to_json(self) -> dict[str, Any]:
        """The document as written (keys that were not in it stay out)."""
        return self.model_dump(mode="json", exclude_unset=True)


def parse_manifest(doc: Any, *, where: str) -> Manifest:
    """Validate a manifest document; ``where`` names it in errors."""
    if not isinstance(doc, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(doc).__name__}")
    if doc.get("schema_version") != SCHEMA_VERSION:
        raise DataError(
            f"{where}: schema_version {doc.get('schema_version')!r}, expected {SCHEMA_VERSION}"
        )
    doc = {"encoding": "png", **doc}  # written before raw existed: always PNG
    check_encoding(doc["encoding"], where=f"{where}: encoding")
    try:
        return Manifest.model_validate(doc)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
                             for err in e.errors())
        raise DataError(f"{where}: not a valid patchray manifest ({problems})") from None


def read_manifest(root: str) -> Manifest:
    """Read and validate ``root/manifest.json`` (one request on ``s3://``)."""
    uri = storage.join(root, MANIFEST)
    try:
        doc = storage.read_json(uri)  # no existence check first: that would be a second request
    except NotFoundError:
        raise DataError(
            f"{uri} not found: {root} is not a patchray dataset (run ingest first)"
        ) from None
    return parse_manifest(doc, where=uri)


# --------------------------------------------------------------------------- hold-out


def in_holdout(sha256: Sequence[str], fraction: float) -> np.ndarray:
    """Which rows of train are held out for validation (``data.val_holdout``).

    Chosen by the pixel hash, so every reader (training, export, scoring) and every run
    picks the same rows, whatever the file layout or read order."""
    buckets = np.fromiter((int(s[:8], 16) % HOLDOUT_BUCKETS for s in sha256), dtype=np.int64,
                          count=len(sha256))
    return buckets < round(fraction * HOLDOUT_BUCKETS)


def holdout_rows(table: Any, fraction: float, held_out: bool) -> Any:
    """The held-out rows of a pyarrow table of train (``held_out``), or the rest."""
    mask = in_holdout(table.column("sha256").to_pylist(), fraction)
    return table.filter(mask if held_out else ~mask)


# --------------------------------------------------------------------------- the handle


@dataclass(frozen=True)
class PatchDataset:
    """An opened dataset: its root and validated manifest. Cheap to pickle (Ray tasks)."""

    root: str
    manifest: Manifest

    @classmethod
    def open(cls, root: str) -> PatchDataset:
        return cls(root, read_manifest(root))

    @property
    def encoding(self) -> str:
        return self.manifest.encoding

    @property
    def views(self) -> tuple[str, ...]:
        """Extra image columns beside ``image`` (``context_image``: a multi-scale dataset)."""
        return tuple(self.manifest.views)

    @property
    def context_scale(self) -> float | None:
        """A multi-scale dataset's context field of view / the patch's; else None."""
        return self.manifest.context_scale if "context_image" in self.manifest.views else None

    @property
    def content_sha256(self) -> str:
        return self.manifest.content_sha256

    @property
    def class_names(self) -> tuple[str, str]:
        """(name of label 0, name of label 1), as the source named them."""
        names = {**DEFAULT_CLASS_NAMES, **self.manifest.class_names}
        return names["0"], names["1"]

    def label_counts(self, split: str) -> dict[str, int]:
        return dict(self.manifest.split(split).labels)

    def rows(self, split: str) -> int:
        return self.manifest.split(split).rows

    def resolve(self, split: str, val_holdout: float = 0.0) -> tuple[str, bool | None]:
        """The stored split that ``split`` reads, and whether it takes train's held-out rows
        (True), the rest (False) or all rows (None).

        ``val_holdout`` is for datasets without val patients (two patients: one to train on,
        one to test on). Validation then shares patients with training and its metrics are
        optimistic; the test patients stay untouched."""
        if split not in ALL_SPLITS:
            raise DataError(f"{self.root}: unknown split {split!r}; expected one of {ALL_SPLITS}")
        if val_holdout <= 0:
            return split, None
        if self.rows("val"):
            raise ConfigError(
                f"data.val_holdout={val_holdout}: {self.root} has val patients; hold-out "
                "validation is only for datasets without a val split (set data.val_holdout=0)"
            )
        if split in ("train", "val"):
            return "train", split == "val"
        return split, None

    def split_files(self, split: str) -> tuple[Any, list[str]]:
        """(filesystem, paths) of one stored split: exactly the files the manifest lists, so
        a stray or half-copied file in the folder never leaks into training."""
        files = self.manifest.split(split).files
        if not files:
            hint = (" (a dataset without val patients needs hold-out validation: "
                    "--set data.val_holdout=0.2)" if split == "val" else "")
            raise DataError(f"{self.root}: split {split!r} has no files in {MANIFEST}{hint}")
        fs, _ = storage.resolve(self.root)
        return fs, [storage.resolve(storage.join(self.root, name))[1] for name in files]

    def files(self) -> list[tuple[str, str]]:
        """(split, file) for every file the manifest lists, in split order."""
        return [(s, name) for s in ALL_SPLITS for name in self.manifest.split(s).files]

    def sample_rows(self, split: str, limit: int, *, val_holdout: float = 0.0,
                    as_png: bool = False, spread: bool = False) -> list[dict[str, Any]]:
        """The first ``limit`` rows of a split, read directly (small samples, not training).
        ``spread``: the first rows of every file instead (files follow patients, so a
        sample spreads over them: INT8 calibration). ``as_png``: images as PNG bytes
        whatever the encoding (what HTTP clients send)."""
        stored, held_out = self.resolve(split, val_holdout)
        fs, paths = self.split_files(stored)
        per_file = -(-limit // max(1, len(paths))) if spread else limit
        rows: list[dict[str, Any]] = []
        for path in paths:
            table = pq.read_table(path, filesystem=fs)
            if held_out is not None:
                table = holdout_rows(table, val_holdout, held_out)
            rows.extend(table.slice(0, min(per_file, limit - len(rows))).to_pylist())
            if len(rows) >= limit:
                break
        if as_png and self.encoding != "png":
            for r in rows:
                r["image"] = encode_png(decode_record_image(
                    r["image"], self.encoding, r["height"], r["width"], source=r["source"]))
        return rows

    def summary(self) -> str:
        """One line per labelled split: patches, patients, labels."""
        return ", ".join(
            f"{s}: {self.rows(s)} patches / {len(self.manifest.split(s).patients)} patients / "
            f"labels {self.label_counts(s)}" for s in SPLITS
        )
