"""Whole-slide readers: one interface over OpenSlide and tifffile.

A slide is a pyramid of levels; level 0 is the full resolution. Every reader answers the
same questions with OpenSlide's conventions, so callers never care which library is behind:

- ``level_count``; ``level_dimensions[level]`` as **(width, height)**; ``level_downsamples``
  (level 0 pixels per level pixel, 1.0 for level 0; the mean of the x and y ratios, as
  OpenSlide computes it);
- ``mpp``: (x, y) microns per pixel at level 0, or None when the file does not say;
  :meth:`SlideReader.level_mpp` for any level;
- ``read_region(level, x0, y0, width, height)``: ``x0, y0`` in **level-0** coordinates,
  ``width, height`` in pixels of ``level``; returns ``(height, width, 3)`` uint8 RGB. Pixels
  outside the slide are white (OpenSlide returns them transparent; both readers composite
  onto white, so the answers agree).

Backends (:func:`open_slide`, ``backend=``):

- ``openslide`` (PyPI ``openslide-python`` + ``openslide-bin``): vendor formats (Aperio
  .svs, Hamamatsu .ndpi, MIRAX, ...) and generic tiled pyramidal TIFF. Its generic-TIFF
  driver only sees pyramid levels stored in the main IFD chain, not in SubIFDs.
- ``tifffile``: pyramidal TIFF (generic, OME-TIFF, SVS through tifffile's series), read
  tile by tile so a region never decodes a whole level. JPEG-compressed files (most real
  SVS) need the ``imagecodecs`` package; a missing codec is reported as a DataError.
- ``auto`` (default): OpenSlide when it is installed and recognises the file, else tifffile.

Both libraries are imported when a slide is opened, never at import time (importing this
module loads no native library and no TensorFlow). Readers hold an open file: open one per
process or Ray task from the path (``open_slide(path)``), do not pickle them.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import numpy as np

from patchray.errors import DataError

Backend = Literal["auto", "openslide", "tifffile"]
BACKENDS = ("auto", "openslide", "tifffile")
WHITE = 255  # what lies outside the slide, and what empty tiles hold


class SlideReader(ABC):
    """A pyramidal slide opened for reading (use as a context manager, or call close)."""

    backend: str
    path: Path
    level_dimensions: tuple[tuple[int, int], ...]  # (width, height) per level
    level_downsamples: tuple[float, ...]
    mpp: tuple[float, float] | None  # (x, y) microns per level-0 pixel

    @property
    def level_count(self) -> int:
        return len(self.level_dimensions)

    @property
    def dimensions(self) -> tuple[int, int]:
        """(width, height) of level 0."""
        return self.level_dimensions[0]

    def check_level(self, level: int, *, where: str = "level") -> int:
        if not isinstance(level, int | np.integer) or not 0 <= level < self.level_count:
            raise DataError(f"{self.path}: {where} {level!r} does not exist; expected 0.."
                            f"{self.level_count - 1} (levels {self.describe_levels()})")
        return int(level)

    def level_mpp(self, level: int) -> float | None:
        """Microns per pixel at ``level`` (the mean of x and y), or None when unknown."""
        self.check_level(level)
        if self.mpp is None:
            return None
        return (self.mpp[0] + self.mpp[1]) / 2 * self.level_downsamples[level]

    def describe_levels(self) -> str:
        """``0: 4096x3072 (x1), 1: 1024x768 (x4)``: what error messages show."""
        return ", ".join(f"{i}: {w}x{h} (x{d:g})" for i, ((w, h), d)
                         in enumerate(zip(self.level_dimensions, self.level_downsamples)))

    def read_region(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        """``(height, width, 3)`` uint8 RGB at ``level``, top-left at level-0 ``(x0, y0)``."""
        level = self.check_level(level)
        if width < 1 or height < 1:
            raise DataError(f"{self.path}: read_region size {width}x{height}; expected "
                            "width and height >= 1")
        return self._read(level, int(x0), int(y0), int(width), int(height))

    def read_level(self, level: int, *, max_pixels: int = 64_000_000) -> np.ndarray:
        """A whole level as ``(height, width, 3)`` uint8 (thumbnails, tissue masks)."""
        level = self.check_level(level)
        w, h = self.level_dimensions[level]
        if w * h > max_pixels:
            raise DataError(
                f"{self.path}: level {level} is {w}x{h} pixels, more than max_pixels="
                f"{max_pixels}; read a lower-resolution level (levels {self.describe_levels()})")
        return self.read_region(level, 0, 0, w, h)

    @abstractmethod
    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray: ...

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> SlideReader:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, levels [{self.describe_levels()}], "
                f"mpp {self.mpp})")


def downsample_of(level0: tuple[int, int], level: tuple[int, int]) -> float:
    """OpenSlide's downsample of a level: the mean of the width and height ratios."""
    return (level0[0] / level[0] + level0[1] / level[1]) / 2


# --------------------------------------------------------------------------- OpenSlide


class OpenSlideReader(SlideReader):
    """A slide read through OpenSlide."""

    backend = "openslide"

    def __init__(self, path: str | Path) -> None:
        openslide = _import_openslide()
        self.path = Path(path)
        try:
            self._slide = openslide.OpenSlide(str(self.path))
        except openslide.OpenSlideError as e:
            raise DataError(f"{self.path}: OpenSlide cannot read it ({e})") from e
        self.level_dimensions = tuple((int(w), int(h)) for w, h in self._slide.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in self._slide.level_downsamples)
        self.mpp = _openslide_mpp(self._slide.properties)

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        region = self._slide.read_region((x0, y0), level, (width, height))  # RGBA, straight alpha
        return composite_on_white(np.asarray(region))

    @property
    def properties(self) -> dict[str, str]:
        return dict(self._slide.properties)

    def close(self) -> None:
        self._slide.close()


def _import_openslide() -> Any:
    try:
        import openslide  # the openslide-bin wheel provides the native library
    except (ImportError, OSError) as e:  # OSError: the package without its native library
        raise DataError(f"the openslide backend needs openslide-python and openslide-bin "
                        f"(pip install openslide-python openslide-bin): {e}") from e
    return openslide


def openslide_available() -> bool:
    """Whether OpenSlide (the Python package and its native library) can be loaded."""
    try:
        _import_openslide()
    except DataError:
        return False
    return True


def _openslide_mpp(props: Any) -> tuple[float, float] | None:
    try:
        x, y = float(props["openslide.mpp-x"]), float(props["openslide.mpp-y"])
    except (KeyError, ValueError):
        return None
    return (x, y) if x > 0 and y > 0 else None


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """RGBA (straight alpha, as openslide-python returns it) -> RGB over a white background."""
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.float32) / 255.0
    out = rgb.astype(np.float32) * a + WHITE * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- tifffile

# TIFF ResolutionUnit -> microns per unit. 1 ("no unit") and a missing tag give no mpp: a
# TIFF that never set it reports 72 dots per inch, which is not a microscope's resolution.
_MICRONS_PER_UNIT = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}


class TiffSlideReader(SlideReader):
    """A pyramidal TIFF read through tifffile, tile by tile (series 0 and its levels)."""

    backend = "tifffile"

    def __init__(self, path: str | Path) -> None:
        import tifffile

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(str(self.path))
        except (OSError, tifffile.TiffFileError, ValueError) as e:
            raise DataError(f"{self.path}: not a readable TIFF ({e})") from e
        try:
            series = self._tif.series[0]
            self._pages = [level.pages[0] for level in series.levels]
            for i, page in enumerate(self._pages):
                _check_rgb_page(page, f"{self.path} level {i}")
        except Exception:
            self._tif.close()
            raise
        self.level_dimensions = tuple((int(p.imagewidth), int(p.imagelength))
                                      for p in self._pages)
        self.level_downsamples = tuple(downsample_of(self.level_dimensions[0], d)
                                       for d in self.level_dimensions)
        self.mpp = _tiff_mpp(self._tif, self._pages[0])

    def _read(self, level: int, x0: int, y0: int, width: int, height: int) -> np.ndarray:
        page = self._pages[level]
        ds = self.level_downsamples[level]
        # The level pixel that holds level-0 (x0, y0): floor, as for tiles on the level grid.
        lx, ly = math.floor(x0 / ds), math.floor(y0 / ds)
        out = np.full((height, width, 3), WHITE, dtype=np.uint8)
        img_w, img_h = self.level_dimensions[level]
        # The part of the request inside the image, in level pixels.
        ax0, ay0 = max(lx, 0), max(ly, 0)
        ax1, ay1 = min(lx + width, img_w), min(ly + height, img_h)
        if ax0 >= ax1 or ay0 >= ay1:
            return out
        seg_h, seg_w = (page.tilelength, page.tilewidth) if page.is_tiled else \
            (page.rowsperstrip or img_h, img_w)
        cols = -(-img_w // seg_w)
        decode = page.decode
        fh = self._tif.filehandle
        for row in range(ay0 // seg_h, (ay1 - 1) // seg_h + 1):
            for col in range(ax0 // seg_w, (ax1 - 1) // seg_w + 1):
                index = row * cols + col
                offset, count = page.dataoffsets[index], page.databytecounts[index]
                data = None
                if count:
                    with fh.lock:
                        fh.seek(offset)
                        data = fh.read(count)
                try:
                    segment, _, _ = decode(data, index, jpegtables=page.jpegtables)
                except (ValueError, NotImplementedError, ImportError) as e:
                    raise DataError(
                        f"{self.path} level {level}: tifffile cannot decode tile {index} "
                        f"(compression {page.compression!r}: {e}); JPEG and JPEG 2000 need "
                        "`pip install imagecodecs`, or use backend='openslide'") from e
                if segment is None:  # an empty tile: leave it white
                    continue
                tile = segment.reshape(segment.shape[-3:])[..., :3]  # (h, w, samples)
                ty, tx = row * seg_h, col * seg_w
                # Intersection of this tile, the image and the request, in level pixels.
                iy0, iy1 = max(ty, ay0), min(ty + tile.shape[0], ay1, img_h)
                ix0, ix1 = max(tx, ax0), min(tx + tile.shape[1], ax1, img_w)
                if iy0 < iy1 and ix0 < ix1:
                    out[iy0 - ly:iy1 - ly, ix0 - lx:ix1 - lx] = tile[iy0 - ty:iy1 - ty,
                                                                     ix0 - tx:ix1 - tx]
        return out

    def close(self) -> None:
        self._tif.close()


def _check_rgb_page(page: Any, where: str) -> None:
    if page.dtype != np.uint8 or page.samplesperpixel not in (3, 4):
        raise DataError(f"{where}: expected 8-bit RGB (3 or 4 samples), got "
                        f"{page.samplesperpixel} samples of {page.dtype}")
    if page.planarconfig != 1:  # CONTIG: each tile holds all samples of its pixels
        raise DataError(f"{where}: planar configuration {page.planarconfig!r} (separate "
                        "colour planes) is not supported; expected contiguous RGB")


def _tiff_mpp(tif: Any, page: Any) -> tuple[float, float] | None:
    """Level-0 microns per pixel: Aperio's ImageDescription ``MPP = ...`` first (its
    resolution tags are often absent), else XResolution/YResolution with a real unit."""
    if getattr(tif, "is_svs", False):
        import tifffile

        try:
            mpp = float(tifffile.svs_description_metadata(page.description)["MPP"])
            if mpp > 0:
                return mpp, mpp
        except (KeyError, ValueError, TypeError):
            pass
    unit = page.tags.valueof(296)  # ResolutionUnit
    if unit is None or int(unit) not in _MICRONS_PER_UNIT:
        return None
    try:
        px, py = page.get_resolution()  # pixels per unit
    except Exception:  # odd tags: treat as unknown rather than guess
        return None
    if px <= 0 or py <= 0:
        return None
    microns = _MICRONS_PER_UNIT[int(unit)]
    return microns / px, microns / py


# --------------------------------------------------------------------------- factory


def open_slide(path: str | Path, *, backend: Backend = "auto") -> SlideReader:
    """Open a slide with ``backend`` (``auto``: OpenSlide when it recognises the file, else
    tifffile). Raises DataError for a missing or unreadable file or an unknown backend."""
    path = Path(path)
    if backend not in BACKENDS:
        raise DataError(f"slide backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    if not path.is_file():
        raise DataError(f"{path}: no such slide file")
    if backend == "openslide":
        return OpenSlideReader(path)
    if backend == "tifffile":
        return TiffSlideReader(path)
    if openslide_available():
        import openslide

        if openslide.OpenSlide.detect_format(str(path)) is not None:
            return OpenSlideReader(path)
    return TiffSlideReader(path)
