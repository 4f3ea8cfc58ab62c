"""A synthetic whole slide for tests: a small pyramidal tiled TIFF with a known tumour.

Nothing is downloaded. :func:`write_synthetic_slide` draws, with a seed:

- white glass (RGB ~244, slight noise) with two irregular tissue islands (pink eosin
  stroma, sparse purple nuclei: H&E-like);
- a tumour region inside the first island (a rectangle, so tests can aim at its edges,
  by default level-0 x 1024..1535, y 1024..1791) of denser, darker nuclei;
- levels at downsamples 1, 4, 16 (4096x3072, 1024x768, 256x192 by default), each a tiled
  TIFF page (256x256 tiles, deflate) in the main IFD chain, where OpenSlide's generic-TIFF
  driver finds them (it ignores SubIFDs), the reduced ones flagged as such
  (NewSubfileType 1) so tifffile reads them as levels of one series;
- resolution tags in pixels per centimetre, so both readers report ``mpp`` (0.5 um/px at
  level 0 by default, 20x-like);

and writes the tumour mask beside the slide twice: as an image
(``<stem>-tumour.png``, level 0, 0/255) and as polygons (``<stem>-tumour.geojson``, level-0
pixels, read by :func:`patchray.slides.tiling.read_polygons_geojson`).

About 2 s of one core and 17 MB of disk for the default size; tests share one per session.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from patchray.errors import DataError
from patchray.slides.tiling import Polygon, rasterize_polygons

GLASS = 244
STROMA = (232, 152, 192)  # eosin pink
NUCLEUS = (112, 64, 152)  # haematoxylin purple
TUMOUR_NUCLEUS = (72, 36, 116)  # darker and denser in tumour
NUCLEUS_DENSITY = 0.10  # fraction of the tissue area under nuclei
TUMOUR_NUCLEUS_DENSITY = 0.45


@dataclass(frozen=True)
class SyntheticSlide:
    """What was written and the ground truth tests check against (level-0 pixels)."""

    path: Path
    mask_path: Path  # the tumour mask as a level-0 PNG
    polygons_path: Path  # the tumour mask as GeoJSON polygons
    dimensions: tuple[int, int]  # (width, height) of level 0
    downsamples: tuple[int, ...]
    mpp: float  # microns per pixel at level 0
    tile_size: int
    tissue_polygons: tuple[tuple[tuple[float, float], ...], ...]
    tumour_polygons: tuple[tuple[tuple[float, float], ...], ...]

    @property
    def tumour_box(self) -> tuple[int, int, int, int]:
        """(x0, y0, x1, y1), exclusive ends, of the rectangular tumour."""
        xs = [x for x, _ in self.tumour_polygons[0]]
        ys = [y for _, y in self.tumour_polygons[0]]
        return int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1

    def tumour_mask(self, downsample: float = 1.0) -> np.ndarray:
        return rasterize_polygons(self.tumour_polygons, self.dimensions, downsample=downsample)

    def tissue_mask(self, downsample: float = 1.0) -> np.ndarray:
        return rasterize_polygons(self.tissue_polygons, self.dimensions, downsample=downsample)


def _island(cx: float, cy: float, rx: float, ry: float, rng: np.random.Generator,
            vertices: int = 48) -> tuple[tuple[float, float], ...]:
    """An irregular closed outline around an ellipse (radius wobbles by up to 8%)."""
    angles = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    phase = rng.uniform(0, 2 * np.pi, size=3)
    wobble = 1 + 0.08 * (np.sin(3 * angles + phase[0]) * 0.5 + np.sin(5 * angles + phase[1])
                         * 0.3 + np.sin(7 * angles + phase[2]) * 0.2)
    return tuple((float(cx + rx * w * np.cos(a)), float(cy + ry * w * np.sin(a)))
                 for a, w in zip(angles, wobble))


def _blobs(shape: tuple[int, int], density: float, rng: np.random.Generator,
           cell: int = 8) -> np.ndarray:
    """Round-ish blobs (nuclei) covering about ``density`` of the area: smooth noise at
    1/``cell`` resolution, enlarged bilinearly, thresholded at its quantile."""
    h, w = shape
    small = rng.integers(0, 256, size=(-(-h // cell), -(-w // cell)), dtype=np.uint8)
    field = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))
    return field >= np.quantile(small, 1 - density)


def draw_slide(width: int, height: int, tissue: np.ndarray, tumour: np.ndarray,
               rng: np.random.Generator) -> np.ndarray:
    """Level-0 RGB pixels: glass, stroma with nuclei, and denser darker tumour nuclei."""
    noise = rng.integers(-10, 11, size=(height, width, 1), dtype=np.int16)  # shared: stain-like
    img = np.empty((height, width, 3), dtype=np.int16)
    img[:] = GLASS
    img += noise // 4
    stroma = np.asarray(STROMA, dtype=np.int16)
    img[tissue] = stroma + noise[tissue] + rng.integers(-6, 7, size=(int(tissue.sum()), 3),
                                                        dtype=np.int16)
    benign = _blobs((height, width), NUCLEUS_DENSITY, rng) & tissue & ~tumour
    img[benign] = np.asarray(NUCLEUS, dtype=np.int16) + noise[benign]
    dense = _blobs((height, width), TUMOUR_NUCLEUS_DENSITY, rng, cell=6) & tumour
    img[dense] = np.asarray(TUMOUR_NUCLEUS, dtype=np.int16) + noise[dense]
    return np.clip(img, 0, 255).astype(np.uint8)


def shrink(pixels: np.ndarray, factor: int) -> np.ndarray:
    """Block-mean downsampling by an integer ``factor`` (the sides must divide)."""
    h, w, c = pixels.shape
    blocks = pixels.reshape(h // factor, factor, w // factor, factor, c).astype(np.float32)
    return np.rint(blocks.mean(axis=(1, 3))).astype(np.uint8)


def write_synthetic_slide(
    path: str | Path, *, width: int = 4096, height: int = 3072,
    downsamples: tuple[int, ...] = (1, 4, 16), mpp: float = 0.5, tile_size: int = 256,
    seed: int = 0,
) -> SyntheticSlide:
    """Write the pyramidal TIFF at ``path`` (and its tumour mask beside it); see the module
    docstring for the layout. Sizes must be divisible by every downsample."""
    import tifffile

    path = Path(path)
    if downsamples[0] != 1 or list(downsamples) != sorted(set(downsamples)):
        raise DataError(f"downsamples {downsamples}: expected increasing, starting at 1")
    if any(width % d or height % d for d in downsamples):
        raise DataError(f"{width}x{height}: expected sides divisible by every downsample "
                        f"{downsamples}")
    if tile_size % 16:
        raise DataError(f"tile_size {tile_size}: TIFF tiles are multiples of 16")
    rng = np.random.default_rng(seed)
    # The layout scales with the slide; the default size gives the documented numbers.
    sx, sy = width / 4096, height / 3072
    tissue_polys = (_island(1300 * sx, 1450 * sy, 900 * sx, 1150 * sy, rng),
                    _island(3000 * sx, 1500 * sy, 600 * sx, 800 * sy, rng))
    x0, y0 = round(1024 * sx), round(1024 * sy)
    x1, y1 = round(1536 * sx) - 1, round(1792 * sy) - 1  # inclusive: PIL fills the edges
    tumour_polys = (((x0, y0), (x1, y0), (x1, y1), (x0, y1)),)
    tissue = rasterize_polygons(tissue_polys, (width, height))
    tumour = rasterize_polygons(tumour_polys, (width, height)) & tissue
    pixels = draw_slide(width, height, tissue, tumour, rng)

    path.parent.mkdir(parents=True, exist_ok=True)
    with tifffile.TiffWriter(path) as tif:
        level = pixels
        previous = 1
        for i, ds in enumerate(downsamples):
            level = shrink(level, ds // previous) if i else level
            previous = ds
            per_cm = 1e4 / (mpp * ds)  # pixels per centimetre at this level
            tif.write(level, photometric="rgb", tile=(tile_size, tile_size),
                      compression="zlib", compressionargs={"level": 1},
                      resolution=(per_cm, per_cm), resolutionunit="CENTIMETER",
                      subfiletype=1 if i else 0, software="patchray.slides.synthetic",
                      metadata=None)

    stem = path.name.split(".")[0]
    mask_path = path.with_name(f"{stem}-tumour.png")
    Image.fromarray(tumour.astype(np.uint8) * 255).save(mask_path, optimize=False)
    polygons_path = path.with_name(f"{stem}-tumour.geojson")
    polygons_path.write_text(json.dumps(geojson(tumour_polys, label="tumour"), indent=1))
    return SyntheticSlide(path=path, mask_path=mask_path, polygons_path=polygons_path,
                          dimensions=(width, height), downsamples=tuple(downsamples), mpp=mpp,
                          tile_size=tile_size, tissue_polygons=tissue_polys,
                          tumour_polygons=tuple(tuple((float(x), float(y)) for x, y in p)
                                                for p in tumour_polys))


def geojson(polygons: tuple[Polygon, ...], *, label: str) -> dict:
    """A FeatureCollection of closed Polygon rings in level-0 pixels (QuPath's layout)."""
    features = []
    for polygon in polygons:
        ring = [[float(x), float(y)] for x, y in polygon]
        features.append({"type": "Feature", "properties": {"classification": {"name": label}},
                         "geometry": {"type": "Polygon", "coordinates": [ring + ring[:1]]}})
    return {"type": "FeatureCollection", "features": features}
