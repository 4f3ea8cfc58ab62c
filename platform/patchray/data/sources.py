"""Patch sources for ``patchray ingest``: an IDC tree, PatchCamelyon HDF5 files, class folders.

Every source is read in two passes so large sources never sit in memory:

1. :meth:`scan` lists :class:`Candidate` patches from paths (and PCam's small label files)
   alone: patient, label, coordinates. Splitting by patient needs every patient's label
   counts before the first patch is written, and this pass gives them cheaply.
2. :meth:`read_pixels` decodes the candidates, in the order given, one at a time (PCam: one
   bounded chunk of an HDF5 file at a time).

Problems with one input never stop the others: they come back as a reason (a string) that
ends up in the ingest report. Problems with the whole source (missing files, unmapped class
folders, no patient ids) raise :class:`~patchray.errors.DataError` before anything is written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from patchray.data.records import SPLITS, decode_image
from patchray.errors import ConfigError, DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
UNKNOWN = -1  # x/y when the source does not say where in the slide a patch came from
DEFAULT_CLASSES = {
    "0": 0, "1": 1,
    "benign": 0, "normal": 0, "negative": 0, "non-tumour": 0, "non-tumor": 0,
    "tumour": 1, "tumor": 1, "malignant": 1, "positive": 1,
}

Pixels = np.ndarray  # HxWx3 uint8
Loaded = tuple["Candidate", Pixels | None, str | None]  # (candidate, pixels, reject reason)


@dataclass(frozen=True, slots=True)
class Candidate:
    """A patch the first pass found: everything but its pixels."""

    source: str  # relative path, or "file.h5[index]": what the report and the record name
    patient_id: str
    slide_id: str
    label: int | None
    x: int = UNKNOWN
    y: int = UNKNOWN
    split: str | None = None  # set by sources with official splits (PCam)
    path: Path = field(default=Path(), compare=False)  # the file to read
    index: int = -1  # the row in an HDF5 file


@dataclass
class ScanResult:
    """What the first pass found: candidates, inputs refused from their path alone, and
    files that are not patches at all (README, .DS_Store), listed but not counted as lost."""

    candidates: list[Candidate] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)


class PatchSource(Protocol):
    kind: str
    root: Path
    nominal_size: tuple[int, int] | None  # (height, width) of a full patch, if known
    class_names: dict[str, str]
    official_splits: bool

    def scan(self) -> ScanResult: ...

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]: ...

    def describe(self) -> dict[str, Any]: ...


# --------------------------------------------------------------------------- decoding


def read_files(candidates: Iterable[Candidate]) -> Iterator[Loaded]:
    """Decode one image file per candidate; a bad file becomes a reason, never an exception."""
    for cand in candidates:
        try:
            yield cand, decode_image(cand.path.read_bytes()), None
        except (DataError, OSError) as e:
            yield cand, None, str(e)


def list_files(root: Path) -> Iterator[tuple[Path, Path]]:
    """Every file below ``root`` as (path, path relative to root), in a stable order."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; expected the root of a patch tree")
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield path, path.relative_to(root)


def is_image_name(rel: Path) -> bool:
    return rel.suffix.lower() in IMAGE_SUFFIXES and not rel.name.startswith(".")


# --------------------------------------------------------------------------- IDC


IDC_NAME = re.compile(r"^(?P<patient>[^_]+)_idx5_x(?P<x>\d+)_y(?P<y>\d+)_class(?P<label>\d+)\.png$")
IDC_LAYOUT = "<patient>/<0|1>/<patient>_idx5_x<X>_y<Y>_class<L>.png"


@dataclass
class IdcSource:
    """The IDC tree (Janowczyk & Madabhushi 2016): one slide per patient, labels in paths."""

    root: Path
    kind: str = "idc"
    nominal_size: tuple[int, int] | None = (50, 50)
    class_names: dict[str, str] = field(
        default_factory=lambda: {"0": "no IDC", "1": "IDC"}
    )
    official_splits: bool = False

    def scan(self) -> ScanResult:
        result = ScanResult()
        for path, rel in list_files(self.root):
            if not is_image_name(rel):
                result.ignored.append(str(rel))
                continue
            cand = parse_idc_path(rel, path)
            if isinstance(cand, str):
                result.rejected.append((str(rel), cand))
            else:
                result.candidates.append(cand)
        return result

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]:
        return read_files(candidates)

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root), "layout": IDC_LAYOUT}


def parse_idc_path(rel: Path, path: Path) -> Candidate | str:
    """Patient, label and position from an IDC path, or the reason the path is not one."""
    if len(rel.parts) != 3:
        return f"expected {IDC_LAYOUT} below the root"
    patient, folder_label, name = rel.parts
    m = IDC_NAME.match(name)
    if not m:
        return "file name does not match <patient>_idx5_x<X>_y<Y>_class<L>.png"
    if folder_label not in ("0", "1"):
        return f"class folder {folder_label!r} is not 0 or 1"
    if m["patient"] != patient:
        return f"patient folder {patient!r} differs from file name patient {m['patient']!r}"
    if m["label"] != folder_label:
        return f"folder label {folder_label} differs from file name label {m['label']}"
    return Candidate(
        source=str(rel), patient_id=patient, slide_id=patient, label=int(folder_label),
        x=int(m["x"]), y=int(m["y"]), path=path,
    )


# --------------------------------------------------------------------------- class folders


def parse_classes(text: str | None) -> dict[str, int]:
    """``benign=0,tumour=1`` -> {"benign": 0, "tumour": 1}; folder names compare lower-case."""
    if not text:
        return dict(DEFAULT_CLASSES)
    mapping: dict[str, int] = {}
    for item in text.split(","):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or value.strip() not in ("0", "1"):
            raise ConfigError(
                f"--classes item {item!r}: expected FOLDER=0 or FOLDER=1 (e.g. benign=0,tumour=1)"
            )
        mapping[name.strip().lower()] = int(value)
    return mapping


def compile_patient_regex(text: str | None) -> re.Pattern[str] | None:
    """The ``--patient-regex``: group ``patient`` (or the first group) names the patient;
    optional groups ``slide``, ``x`` and ``y`` fill those columns."""
    if not text:
        return None
    try:
        pattern = re.compile(text)
    except re.error as e:
        raise ConfigError(
            f"--patient-regex {text!r} is not a valid regular expression ({e})"
        ) from e
    if pattern.groups < 1:
        raise ConfigError(
            f"--patient-regex {text!r} has no group; mark the patient id with (...) or "
            "(?P<patient>...), e.g. '^(?P<patient>\\d+)_'"
        )
    return pattern


@dataclass
class FolderSource:
    """Class folders ``<root>/[<patient>/]<class>/*.png|jpg``, or any tree when unlabelled.

    The patient id comes from ``patient_regex`` on the file name if given, else from the
    folder above the class folder (unlabelled: the folder right under the root). A labelled
    tree with neither is refused: patient-level splits need patient ids, and guessing one
    per file would let one patient's patches land in both train and test.
    """

    root: Path
    classes: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_CLASSES))
    patient_regex: re.Pattern[str] | None = None
    unlabelled: bool = False
    kind: str = "folder"
    nominal_size: tuple[int, int] | None = None  # the most common size is taken
    official_splits: bool = False
    found_classes: dict[str, set[str]] = field(default_factory=dict, init=False, repr=False)

    @property
    def class_names(self) -> dict[str, str]:
        """Label -> the class folders found for it (e.g. "benign/normal")."""
        found = sorted(self.found_classes.items())
        return {label: "/".join(sorted(folders)) for label, folders in found}

    def scan(self) -> ScanResult:
        result = ScanResult()
        unmapped: dict[str, int] = {}
        missing_patient: list[str] = []
        for path, rel in list_files(self.root):
            if not is_image_name(rel):
                result.ignored.append(str(rel))
                continue
            label: int | None = None
            if not self.unlabelled:
                if len(rel.parts) < 2:
                    result.rejected.append((str(rel), "not inside a class folder"))
                    continue
                folder = rel.parts[-2]
                if folder.lower() not in self.classes:
                    unmapped[folder] = unmapped.get(folder, 0) + 1
                    continue
                label = self.classes[folder.lower()]
                self.found_classes.setdefault(str(label), set()).add(folder)
            cand = self._candidate(rel, path, label)
            if isinstance(cand, str):
                result.rejected.append((str(rel), cand))
            elif cand is None:
                missing_patient.append(str(rel))
            else:
                result.candidates.append(cand)
        self._check_layout(unmapped, missing_patient)
        return result

    def _candidate(self, rel: Path, path: Path, label: int | None) -> Candidate | str | None:
        """The candidate, a reject reason, or None when the layout gives no patient id."""
        groups: dict[str, str] = {}
        if self.patient_regex is not None:
            m = self.patient_regex.search(rel.name)
            if not m:
                return f"file name does not match --patient-regex {self.patient_regex.pattern!r}"
            groups = {k: v for k, v in m.groupdict().items() if v}
            if not groups.setdefault("patient", m.group(1) or ""):
                return f"--patient-regex {self.patient_regex.pattern!r} captured no patient id"
        else:
            depth = 2 if self.unlabelled else 3  # the folder above the file (or its class)
            if len(rel.parts) < depth:
                if not self.unlabelled:
                    return None
                groups["patient"] = "unknown"
            else:
                groups["patient"] = rel.parts[0] if self.unlabelled else rel.parts[-3]
        try:
            x, y = int(groups.get("x", UNKNOWN)), int(groups.get("y", UNKNOWN))
        except ValueError:
            return f"--patient-regex groups x/y must be integers, got {groups}"
        return Candidate(
            source=str(rel), patient_id=groups["patient"],
            slide_id=groups.get("slide", groups["patient"]), label=label, x=x, y=y, path=path,
        )

    def _check_layout(self, unmapped: dict[str, int], missing_patient: list[str]) -> None:
        if unmapped:
            found = ", ".join(f"{name!r} ({n} files)" for name, n in sorted(unmapped.items()))
            mapping = ",".join(f"{k}={v}" for k, v in sorted(self.classes.items()))
            raise DataError(
                f"{self.root}: class folders without a label: {found}; map every class "
                f"folder with --classes NAME=0|1,... (current mapping: {mapping})"
            )
        if missing_patient:
            raise DataError(
                f"{self.root}: no patient id for {len(missing_patient)} files "
                f"(e.g. {missing_patient[0]}): patient-level splits need one. Lay the files "
                "out as <root>/<patient>/<class>/<file>, or pass --patient-regex with a "
                "group for the patient in the file name ('(.+)' makes every file its own "
                "patient: only right if no two files share a patient)"
            )

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]:
        return read_files(candidates)

    def describe(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "root": str(self.root),
            "classes": None if self.unlabelled else dict(sorted(self.classes.items())),
            "patient_regex": self.patient_regex.pattern if self.patient_regex else None,
            "unlabelled": self.unlabelled,
        }


# --------------------------------------------------------------------------- PatchCamelyon


PCAM_NAME = re.compile(r"^camelyonpatch_level_2_split_(?P<split>train|valid|test)_(?P<xy>x|y)\.h5$")
PCAM_SPLIT = {"train": "train", "valid": "val", "test": "test"}
PCAM_CHUNK_ROWS = 256  # 256 x 96x96x3 = 7 MB per read, whatever the file size


@dataclass
class PcamSource:
    """PatchCamelyon HDF5 files, with the official (patient-disjoint) splits kept as they are.

    PCam publishes no patient ids; its authors built the splits so that no slide spans two
    of them. Each split therefore gets one pseudo-patient ``pcam-<split>``, which keeps the
    patient-disjoint check meaningful without pretending to know more.
    """

    root: Path
    chunk_rows: int = PCAM_CHUNK_ROWS
    kind: str = "pcam"
    nominal_size: tuple[int, int] | None = (96, 96)
    class_names: dict[str, str] = field(
        default_factory=lambda: {"0": "no tumour in centre", "1": "tumour in centre"}
    )
    official_splits: bool = True

    def pairs(self) -> dict[str, tuple[Path, Path]]:
        """Split -> (x file, y file); a split with only one of the two is an error."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a folder; expected the PCam .h5 files in it")
        found: dict[str, dict[str, Path]] = {}
        for path in sorted(self.root.iterdir()):
            if path.name.endswith(".h5.gz"):
                raise DataError(f"{path}: compressed; run gunzip on it first (h5py reads .h5)")
            m = PCAM_NAME.match(path.name)
            if m:
                found.setdefault(PCAM_SPLIT[m["split"]], {})[m["xy"]] = path
        if not found:
            raise DataError(
                f"{self.root}: no camelyonpatch_level_2_split_<train|valid|test>_<x|y>.h5 files"
            )
        for files in found.values():
            for xy in ("x", "y"):
                if xy not in files:
                    other = next(iter(files.values()))
                    raise DataError(f"{other}: its {xy} file is missing in {self.root}")
        ordered = sorted(found.items(), key=lambda t: SPLITS.index(t[0]))
        return {split: (files["x"], files["y"]) for split, files in ordered}

    def scan(self) -> ScanResult:
        import h5py

        result = ScanResult()
        pairs = self.pairs()
        known = {p.name for pair in pairs.values() for p in pair}
        result.ignored = sorted(p.name for p in self.root.iterdir() if p.name not in known)
        for split, (x_path, y_path) in pairs.items():
            with h5py.File(x_path, "r") as fx, h5py.File(y_path, "r") as fy:
                n = check_pcam_arrays(
                    x_path, _dataset(fx, x_path, "x"), y_path, _dataset(fy, y_path, "y")
                )
                labels = np.asarray(fy["y"][:]).reshape(n)
            for i, label in enumerate(labels.tolist()):
                source = f"{x_path.name}[{i}]"
                if label not in (0, 1):
                    reason = f"label {label} in {y_path.name} is not 0 or 1"
                    result.rejected.append((source, reason))
                    continue
                patient = f"pcam-{split}"
                result.candidates.append(Candidate(
                    source=source, patient_id=patient, slide_id=patient, label=int(label),
                    split=split, path=x_path, index=i,
                ))
        return result

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]:
        """Decode candidates in order, reading each HDF5 file one bounded chunk at a time."""
        import h5py

        open_path: Path | None = None
        handle: Any = None
        chunk_start, chunk = 0, np.empty((0, 0, 0, 3), dtype=np.uint8)
        try:
            for cand in candidates:
                if cand.path != open_path:
                    if handle is not None:
                        handle.close()
                    handle, open_path = h5py.File(cand.path, "r"), cand.path
                    chunk_start, chunk = 0, chunk[:0]
                if not chunk_start <= cand.index < chunk_start + len(chunk):
                    chunk_start = cand.index
                    chunk = np.asarray(handle["x"][chunk_start : chunk_start + self.chunk_rows])
                yield cand, np.ascontiguousarray(chunk[cand.index - chunk_start]), None
        finally:
            if handle is not None:
                handle.close()

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "root": str(self.root),
                "files": {s: [x.name, y.name] for s, (x, y) in self.pairs().items()}}


def _dataset(h5: Any, path: Path, name: str) -> Any:
    if name not in h5:
        raise DataError(f"{path}: no dataset {name!r} (found {sorted(h5.keys())})")
    return h5[name]


def check_pcam_arrays(x_path: Path, x: Any, y_path: Path, y: Any) -> int:
    """Check the x/y datasets have PCam's shapes and agree on N; return N."""
    if x.ndim != 4 or x.shape[3] != 3 or x.dtype != np.uint8:
        raise DataError(
            f"{x_path}: dataset 'x' has shape {x.shape} dtype {x.dtype}; "
            "expected (N, H, W, 3) uint8"
        )
    if y.shape[0] != x.shape[0] or int(np.prod(y.shape[1:], dtype=np.int64)) != 1:
        raise DataError(
            f"{y_path}: dataset 'y' has shape {y.shape}; expected ({x.shape[0]}, 1, 1, 1) "
            f"to match {x_path.name}"
        )
    return int(x.shape[0])


# --------------------------------------------------------------------------- synthetic


@dataclass
class SyntheticSource:
    """Generated H&E-like patches (:mod:`patchray.data.synthetic`), ingested like any source.

    The demo and the tests write their data through the same path as real sources (split by
    patient, checks, report, manifest). Labels come from the patients' layouts without
    drawing pixels; each patch is drawn from its own seed, so the ingest workers can draw
    them in parallel and the bytes do not depend on how many there are.
    """

    num_patients: int
    patches_per_patient: int
    size: int = 50
    positive_fraction: float = 0.3
    seed: int = 0
    root: Path = Path("<synthetic>")
    kind: str = "synthetic"
    class_names: dict[str, str] = field(default_factory=lambda: {"0": "benign", "1": "tumour"})
    official_splits: bool = False

    @property
    def nominal_size(self) -> tuple[int, int]:
        return self.size, self.size

    def scan(self) -> ScanResult:
        from patchray.data.synthetic import patient_layout, patient_name

        result = ScanResult()
        n = self.patches_per_patient
        for p in range(self.num_patients):
            labels, positions = patient_layout(p, self.seed, n, self.positive_fraction, self.size)
            patient = patient_name(p)
            for i, ((x, y), label) in enumerate(zip(positions, labels.tolist(), strict=True)):
                result.candidates.append(Candidate(
                    source=f"synthetic/{patient}/{i}", patient_id=patient, slide_id=patient,
                    label=int(label), x=x, y=y, index=p * n + i,
                ))
        return result

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]:
        from patchray.data.synthetic import patch_pixels

        for cand in candidates:
            p, i = divmod(cand.index, self.patches_per_patient)
            yield cand, patch_pixels(self.seed, p, i, int(cand.label or 0), self.size), None

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind, "num_patients": self.num_patients,
                "patches_per_patient": self.patches_per_patient, "size": self.size,
                "positive_fraction": self.positive_fraction, "seed": self.seed}


# --------------------------------------------------------------------------- whole slides


def scan_slides_here(source: SlideSource) -> list[Any]:
    """Scan a source's slides one after another in this process (no Ray)."""
    from patchray.slides.inputs import scan_slide

    return [scan_slide(s, source.config, thumbnails=source.thumbnails, backend=source.backend,
                       thumbnail_max_side=source.thumbnail_max_side) for s in source.slides]


@dataclass
class SlideSource:
    """Tiles of whole slides (:mod:`patchray.slides`), ingested like any patch source.

    :meth:`scan` tiles every slide (tissue mask, grid, centre labels from its tumour mask:
    low-resolution levels only) through ``scan_all``: one after another by default, one Ray
    task per slide from :mod:`patchray.slides.jobs`. :meth:`read_pixels` opens each slide
    once per chunk (readers hold files: never pickled) and reads neighbouring tiles
    together. Records carry the slide id, its patient, and ``x``/``y`` at level 0; the
    level, sizes and microns per pixel of every slide are in :meth:`describe` (the
    manifest's ``source``).
    """

    slides: list[Any]  # patchray.slides.inputs.SlideInput
    config: Any  # patchray.config.TilingConfig
    backend: str = "auto"
    thumbnails: str | None = None  # folder URI for <slide>.png / <slide>.json
    thumbnail_max_side: int = 1024
    scan_all: Any = None  # (SlideSource) -> list[SlideScan]; None: scan_slides_here
    root: Path = Path("<slides>")
    kind: str = "slides"
    class_names: dict[str, str] = field(
        default_factory=lambda: {"0": "no tumour in centre", "1": "tumour in centre"})
    official_splits: bool = False
    records: list[dict[str, Any]] = field(default_factory=list, init=False)
    geometry: dict[str, dict[str, Any]] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        if self.slides:
            self.root = Path(self.slides[0].path).parent

    @property
    def nominal_size(self) -> tuple[int, int]:
        return self.config.patch_size, self.config.patch_size

    def scan(self) -> ScanResult:
        scans = (self.scan_all or scan_slides_here)(self)
        result = ScanResult()
        self.records = [s.record() for s in scans]
        for index, sc in enumerate(scans):
            g = sc.geometry
            self.geometry[sc.slide.path] = g
            sid, patient = sc.slide.slide_id, sc.slide.patient_id
            for x, y, label, _ in sc.tiles:
                result.candidates.append(Candidate(
                    source=f"{sid}@L{g['level']}[x={x},y={y}]", patient_id=patient,
                    slide_id=sid, label=label, x=x, y=y, path=Path(sc.slide.path), index=index))
            if not sc.tiles:
                result.rejected.append((sc.slide.path, f"no tissue tiles ({sc.summary})"))
        return result

    def read_pixels(self, candidates: Iterable[Candidate]) -> Iterator[Loaded]:
        """Pixels of tiles, reading each run of one slide's candidates together."""
        from itertools import groupby

        from patchray.slides.reader import open_slide
        from patchray.slides.tiling import Tile, read_tiles

        readers: dict[Path, Any] = {}
        try:
            for path, run in groupby(candidates, key=lambda c: c.path):
                run = list(run)
                g = self.geometry[str(path)]
                try:
                    if path not in readers:
                        readers[path] = open_slide(path, backend=self.backend)  # type: ignore[arg-type]
                    tiles = [Tile(c.slide_id, c.patient_id, g["level"], c.x, c.y,
                                  g["read_size"], g["patch_size"], g["side0"], g["mpp"], 0.0,
                                  c.label, None) for c in run]
                    pixels = read_tiles(readers[path], tiles)
                except DataError as e:
                    for cand in run:
                        yield cand, None, str(e)
                    continue
                for cand, p in zip(run, pixels, strict=True):
                    yield cand, p, None
        finally:
            for reader in readers.values():
                reader.close()

    def describe(self) -> dict[str, Any]:
        """The manifest's ``source``: the tiling config and, per slide, its patient, mask,
        level, sizes and microns per pixel (``microns_per_pixel``: of the patches, the same
        for every slide when tiled with ``target_mpp``; else None when they differ)."""
        mpps = {r["microns_per_pixel"] for r in self.records}
        mpp = next(iter(mpps)) if len(mpps) == 1 else None
        return {"kind": self.kind, "tiling": self.config.model_dump(mode="json"),
                "patch_size": self.config.patch_size,
                "microns_per_pixel": round(mpp, 6) if mpp else None,
                "centre_rule": {"centre_fraction": self.config.centre_fraction,
                                "min_centre_tumour": self.config.min_centre_tumour},
                "backend": self.backend, "slides": self.records}


# --------------------------------------------------------------------------- factory


def create_source(
    kind: str,
    root: str | Path,
    *,
    classes: str | None = None,
    patient_regex: str | None = None,
    unlabelled: bool = False,
) -> PatchSource:
    """Build the source for ``patchray ingest KIND``; options a source cannot use are errors."""
    root = Path(root).expanduser().resolve()
    if kind == "folder":
        if unlabelled and classes:
            raise ConfigError("--classes and --unlabelled exclude each other")
        return FolderSource(
            root, classes=parse_classes(classes),
            patient_regex=compile_patient_regex(patient_regex), unlabelled=unlabelled,
        )
    used = [opt for opt, value in (("--classes", classes), ("--patient-regex", patient_regex),
                                   ("--unlabelled", unlabelled)) if value]
    if used:
        raise ConfigError(f"{', '.join(used)}: only for `ingest folder`, not `ingest {kind}`")
    if kind == "idc":
        return IdcSource(root)
    if kind == "pcam":
        return PcamSource(root)
    raise ConfigError(f"unknown source kind {kind!r}; expected idc, pcam or folder")
