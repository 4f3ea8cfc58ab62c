"""Which slides a slide job reads, whose patient each is, and its tumour mask; one slide's scan.

Plain functions, no Ray (the Ray tasks in :mod:`patchray.slides.jobs` call
:func:`scan_slide` once per slide, inside the task, because readers hold files)::

    inputs = resolve_slide_inputs(["a.svs", "b.svs"], patients="patients.csv", masks="masks/")
    scan = scan_slide(inputs[0], TilingConfig(patch_size=96), thumbnails="out/slides")

- **Slide id**: the file name up to its first dot (``p01.ome.tif`` -> ``p01``); two slides
  with the same id are refused (their records and outputs would collide).
- **Patient**: from a slide -> patient table (``--patients``): CSV with a header naming a
  slide column (``slide_id`` or ``slide``) and a patient column (``patient_id`` or
  ``patient``), or YAML ``{slide_id: patient_id}``. Without a table every slide is its own
  patient (right for CAMELYON-style data, one slide per patient); with one, every slide must
  be in it, so a forgotten row never makes a patient of its own in another split.
- **Tumour mask** (``--masks DIR``): ``<id>[-tumour|-tumor|_tumour|_tumor|-mask|_mask]``
  with ``.geojson``/``.json`` (polygons, level-0 pixels: QuPath's export) or ``.png`` (any
  resolution with the slide's aspect ratio, non-zero = tumour). Polygons win when both
  exist (they are exact). A slide without a mask is an error unless
  ``missing_mask="benign"``.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from patchray import storage
from patchray.config import TilingConfig
from patchray.errors import ConfigError, DataError

MASK_SUFFIXES = ("", "-tumour", "-tumor", "_tumour", "_tumor", "-mask", "_mask")
POLYGON_EXTENSIONS = (".geojson", ".json")
IMAGE_EXTENSIONS = (".png",)
SLIDE_COLUMNS = ("slide_id", "slide")
PATIENT_COLUMNS = ("patient_id", "patient")


def slide_id_of(path: str | Path) -> str:
    """``/data/p01.ome.tif`` -> ``p01``: the name tile records and outputs carry."""
    return Path(path).name.split(".")[0]


@dataclass(frozen=True)
class SlideInput:
    """One slide of a job: where it is and what it is. Picklable (goes to a Ray task)."""

    path: str
    slide_id: str
    patient_id: str
    mask: str | None = None  # a mask file, or None (unlabelled, or benign when labelled)
    labelled: bool = False  # tiles get labels (from the mask, or 0 without one)


def read_patient_table(path: str | Path) -> dict[str, str]:
    """A slide -> patient table from CSV or YAML (see the module docstring)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise DataError(f"{path}: cannot read the slide -> patient table ({e.strerror})") from e
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise DataError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(doc, dict) or not all(isinstance(v, str | int) for v in doc.values()):
            raise DataError(f"{path}: expected a mapping slide_id: patient_id, got "
                            f"{type(doc).__name__}")
        return {str(k): str(v) for k, v in doc.items()}
    rows = list(csv.DictReader(io.StringIO(text)))
    header = [h.strip().lower() for h in (rows[0].keys() if rows else [])]
    slide_col = next((c for c in SLIDE_COLUMNS if c in header), None)
    patient_col = next((c for c in PATIENT_COLUMNS if c in header), None)
    if slide_col is None or patient_col is None:
        raise DataError(f"{path}: expected a CSV header with a slide column "
                        f"({' or '.join(SLIDE_COLUMNS)}) and a patient column "
                        f"({' or '.join(PATIENT_COLUMNS)}), got {header or 'no rows'} "
                        "(or a .yaml file mapping slide_id: patient_id)")
    table: dict[str, str] = {}
    for i, row in enumerate(rows, start=2):
        row = {k.strip().lower(): (v or "").strip() for k, v in row.items() if k}
        slide, patient = slide_id_of(row[slide_col]), row[patient_col]
        if not slide or not patient:
            raise DataError(f"{path} line {i}: empty {slide_col} or {patient_col}")
        if table.get(slide, patient) != patient:
            raise DataError(f"{path} line {i}: slide {slide!r} is given two patients "
                            f"({table[slide]!r} and {patient!r})")
        table[slide] = patient
    return table


def find_mask(masks: str | Path, slide_id: str) -> Path | None:
    """The tumour mask file of ``slide_id`` in folder ``masks``: polygons before images."""
    folder = Path(masks)
    for extensions in (POLYGON_EXTENSIONS, IMAGE_EXTENSIONS):
        found = [folder / f"{slide_id}{s}{e}" for s in MASK_SUFFIXES for e in extensions]
        found = [p for p in found if p.is_file()]
        if len(found) > 1:
            raise DataError(f"{folder}: more than one mask for slide {slide_id!r}: "
                            f"{', '.join(p.name for p in found)}; keep one")
        if found:
            return found[0]
    return None


def resolve_slide_inputs(slides: Sequence[str | Path], *, patients: str | Path | None = None,
                         masks: str | Path | None = None,
                         missing_mask: str = "error") -> list[SlideInput]:
    """Slides (files) -> :class:`SlideInput` with patients and masks; every problem with the
    list (a missing file, a duplicate id, a slide not in the table, no mask) is one error."""
    if not slides:
        raise ConfigError("no slides given: expected one or more slide files")
    if masks is not None and not Path(masks).is_dir():
        raise DataError(f"--masks {masks}: not a folder")
    table = read_patient_table(patients) if patients else None
    out: list[SlideInput] = []
    seen: dict[str, str] = {}
    problems: list[str] = []
    for slide in slides:
        path = Path(slide).expanduser().resolve()
        sid = slide_id_of(path)
        if not path.is_file():
            problems.append(f"{slide}: no such slide file")
            continue
        if sid in seen:
            problems.append(f"{slide}: slide id {sid!r} is also {seen[sid]}")
            continue
        seen[sid] = str(slide)
        if table is not None and sid not in table:
            problems.append(f"{slide}: slide {sid!r} is not in the patient table {patients}")
            continue
        mask = find_mask(masks, sid) if masks is not None else None
        if masks is not None and mask is None and missing_mask != "benign":
            problems.append(f"{slide}: no tumour mask for {sid!r} in {masks} (expected "
                            f"{sid}.geojson, {sid}-tumour.png, ...; or set "
                            "ingest.missing_mask=benign for slides without tumour)")
            continue
        out.append(SlideInput(str(path), sid, table[sid] if table else sid,
                              str(mask) if mask else None, labelled=masks is not None))
    if problems:
        raise DataError("cannot tile these slides:\n  " + "\n  ".join(problems))
    return out


# --------------------------------------------------------------------------- one slide


@dataclass(frozen=True)
class SlideScan:
    """What tiling one slide gave: its tiles as plain tuples (cheap to send back from a Ray
    task) and everything the manifest, the heat map and the report need."""

    slide: SlideInput
    geometry: dict[str, Any]  # patchray.slides.tiling.Geometry as a dict
    dimensions: tuple[int, int]
    mpp: tuple[float, float] | None  # level-0 microns per pixel
    windows: int
    tissue_fraction: float  # of the slide's area, from the tissue mask
    tiles: list[tuple[int, int, int | None, float | None]] = field(repr=False)  # x, y, label, tumour fraction
    thumbnail: str | None = None  # where the grid picture was written
    summary: str = ""

    @property
    def count(self) -> int:
        return len(self.tiles)

    @property
    def positives(self) -> int | None:
        return sum(t[2] or 0 for t in self.tiles) if self.slide.labelled else None

    def record(self) -> dict[str, Any]:
        """The per-slide entry of the manifest's source description and the count file."""
        return {"slide_id": self.slide.slide_id, "patient_id": self.slide.patient_id,
                "path": self.slide.path, "mask": self.slide.mask,
                "dimensions": list(self.dimensions),
                "mpp_level0": list(self.mpp) if self.mpp else None,
                "level": self.geometry["level"], "read_size": self.geometry["read_size"],
                "side0": self.geometry["side0"], "stride0": self.geometry["stride0"],
                "microns_per_pixel": self.geometry["mpp"], "windows": self.windows,
                "tiles": self.count, "tumour_tiles": self.positives,
                "tissue_fraction": round(self.tissue_fraction, 4), "thumbnail": self.thumbnail}

    def tile_objects(self) -> list[Any]:
        """The tiles as :class:`~patchray.slides.tiling.Tile` (for reading their pixels)."""
        from patchray.slides.tiling import Tile

        g = self.geometry
        return [Tile(slide_id=self.slide.slide_id, patient_id=self.slide.patient_id,
                     level=g["level"], x=x, y=y, read_size=g["read_size"],
                     patch_size=g["patch_size"], side0=g["side0"], mpp=g["mpp"],
                     tissue_fraction=0.0, label=label, tumour_fraction=frac)
                for x, y, label, frac in self.tiles]


def load_mask(path: str | Path, dimensions: tuple[int, int]) -> Any:
    """A :class:`~patchray.slides.tiling.RegionMask` from a GeoJSON or PNG mask file."""
    from patchray.slides.tiling import mask_from_image, mask_from_polygons, read_polygons_geojson

    path = Path(path)
    if path.suffix.lower() in POLYGON_EXTENSIONS:
        polygons = read_polygons_geojson(path)
        if not polygons:
            raise DataError(f"{path}: no polygons")
        # At most ~16 M mask pixels: exact enough for the centre rule on 50-pixel centres.
        downsample = max(1.0, (dimensions[0] * dimensions[1] / 16e6) ** 0.5)
        return mask_from_polygons(polygons, dimensions, downsample=downsample)
    return mask_from_image(path, dimensions)


def scan_slide(slide: SlideInput, config: TilingConfig, *, thumbnails: str | None = None,
               backend: str = "auto", thumbnail_max_side: int = 1024) -> SlideScan:
    """Tile one slide (tissue mask, grid, centre labels) and, with ``thumbnails`` (a folder
    URI), write ``<id>.png`` (the grid drawn) and ``<id>.json`` (its counts) there."""
    from dataclasses import asdict

    from patchray.slides.reader import open_slide
    from patchray.slides.tiling import RegionMask, tile_slide

    with open_slide(slide.path, backend=backend) as reader:  # type: ignore[arg-type]
        tumour = None
        if slide.mask is not None:
            tumour = load_mask(slide.mask, reader.dimensions)
        elif slide.labelled:  # a slide without tumour (missing_mask=benign): every tile 0
            import numpy as np

            w, h = reader.dimensions
            ds = max(w, h) / 256
            empty = np.zeros((max(1, round(h / ds)), max(1, round(w / ds))), dtype=bool)
            tumour = RegionMask.from_array(empty, reader.dimensions)
        tiling = tile_slide(reader, config, patient_id=slide.patient_id,
                            slide_id=slide.slide_id, tumour_mask=tumour)
        scan = SlideScan(
            slide=slide, geometry=asdict(tiling.geometry), dimensions=reader.dimensions,
            mpp=reader.mpp, windows=tiling.windows,
            tissue_fraction=float(tiling.tissue.mask.mean()),
            tiles=[(t.x, t.y, t.label, t.tumour_fraction) for t in tiling.tiles],
            summary=tiling.summary())
        if thumbnails is None:
            return scan
        picture = storage.join(thumbnails, f"{slide.slide_id}.png")
        buf = io.BytesIO()
        tiling.thumbnail(reader, max_side=thumbnail_max_side).save(buf, format="PNG")
        storage.write_bytes(picture, buf.getvalue())
    scan = SlideScan(**{**scan.__dict__, "thumbnail": picture})
    storage.write_bytes(storage.join(thumbnails, f"{slide.slide_id}.json"),
                        json.dumps(scan.record(), indent=1).encode())
    return scan
