"""The patch record: one row of a patchray Parquet dataset, and PNG encode/decode.

A dataset root holds one folder per split (``train/``, ``val/``, ``test/``, and
``unlabelled/`` for patches without a label) of Parquet files with :data:`PATCH_SCHEMA`, and a
``manifest.json`` describing it. The manifest's ``encoding`` says how the ``image`` column
holds pixels: ``png`` (lossless, the default) or ``raw`` (the HxWx3 uint8 bytes: no decoding,
for GPU workers that PNG decoding on the CPU would starve; Parquet's compression keeps it
only ~18% larger on real IDC patches).
"""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pyarrow as pa
from PIL import Image

from patchray.errors import DataError

SCHEMA_VERSION = 1
SPLITS = ("train", "val", "test")  # the labelled splits training and evaluation read
UNLABELLED = "unlabelled"  # label-free patches, kept apart for semi-supervised training
ALL_SPLITS = (*SPLITS, UNLABELLED)
ROW_GROUP_ROWS = 512  # ~1-2 MB of 50x50 PNGs: small enough to stream, large enough to scan

PATCH_SCHEMA = pa.schema(
    [
        pa.field("image", pa.binary(), nullable=False),  # RGB, as the manifest's encoding says
        pa.field("label", pa.int8(), nullable=True),  # 1 = tumour, 0 = benign, null = unlabelled
        pa.field("patient_id", pa.string(), nullable=False),
        pa.field("slide_id", pa.string(), nullable=False),
        pa.field("x", pa.int32(), nullable=False),  # top-left pixel in the slide; -1 = unknown
        pa.field("y", pa.int32(), nullable=False),
        pa.field("height", pa.int32(), nullable=False),  # native size, before any padding
        pa.field("width", pa.int32(), nullable=False),
        pa.field("source", pa.string(), nullable=False),  # where the patch came from
        pa.field("sha256", pa.string(), nullable=False),  # of the decoded RGB pixels
    ]
)

#: Extra image columns a dataset may carry beside ``image`` (same encoding, same native size):
#: ``context_image`` is a multi-scale dataset's second view (:mod:`patchray.slides.multiscale`).
VIEW_COLUMNS = ("context_image",)


def patch_schema(views: tuple[str, ...] | list[str] = ()) -> pa.Schema:
    """PATCH_SCHEMA, plus the extra image columns ``views`` (from :data:`VIEW_COLUMNS`)."""
    schema = PATCH_SCHEMA
    for name in views:
        if name not in VIEW_COLUMNS:
            raise DataError(f"unknown view column {name!r}; expected one of {VIEW_COLUMNS}")
        schema = schema.append(pa.field(name, pa.binary(), nullable=False))
    return schema


ENCODINGS = ("png", "raw")


def check_encoding(encoding: str, *, where: str = "encoding") -> str:
    if encoding not in ENCODINGS:
        raise DataError(
            f"{where}: unknown patch encoding {encoding!r}; expected one of {ENCODINGS}"
        )
    return encoding


def encode_pixels(pixels: np.ndarray, encoding: str) -> bytes:
    """The ``image`` column's bytes for an HxWx3 uint8 patch in ``encoding``."""
    if check_encoding(encoding) == "png":
        return encode_png(pixels)
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DataError(
            f"raw patches are HxWx3 uint8, got shape {pixels.shape} dtype {pixels.dtype}"
        )
    return np.ascontiguousarray(pixels).tobytes()


def decode_record_image(
    data: bytes, encoding: str, height: int, width: int, *, source: str = "<bytes>"
) -> np.ndarray:
    """One record's ``image`` bytes back to its native HxWx3 uint8 pixels."""
    if check_encoding(encoding) == "png":
        return decode_image(data, source=source)
    if len(data) != height * width * 3:
        raise DataError(f"{source}: {len(data)} raw bytes, expected {height}x{width}x3 = "
                        f"{height * width * 3} (is the dataset PNG-encoded?)")
    return np.frombuffer(data, dtype=np.uint8).reshape(height, width, 3)


def encode_png(pixels: np.ndarray) -> bytes:
    """Encode an HxWx3 uint8 array as PNG bytes (lossless)."""
    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise DataError(
            f"encode_png expects an HxWx3 uint8 array, got shape {pixels.shape} dtype {pixels.dtype}"
        )
    buf = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def decode_image(data: bytes, *, source: str | None = None) -> np.ndarray:
    """Decode PNG or JPEG bytes to HxWx3 uint8 RGB: the one decoder policy of patchray, for
    ingest and serving alike.

    Palette and RGBA images are accepted only when fully opaque (the conversion is then
    lossless); grey, CMYK, transparent and 16-bit images are refused: an H&E classifier fed
    a grey patch would score a stain it never saw, so it is better to say so than to guess.
    ``source`` (a file name, "request body") prefixes the error message when given.
    """
    where = f"{source}: " if source else ""
    try:
        return _decode_rgb(data)
    except DataError as e:
        raise DataError(f"{where}{e}") from None
    except Exception as e:  # PIL raises many types for truncated or foreign data
        raise DataError(f"{where}not a readable PNG/JPEG image ({e})") from e


def _decode_rgb(data: bytes) -> np.ndarray:
    # Pillow silently reduces a 16-bit-per-channel PNG to 8 bits; the IHDR says it was one.
    if data[:8] == PNG_SIGNATURE and len(data) > 24 and data[24] == 16:
        raise DataError("expected 8 bits per channel, got a 16-bit PNG (convert it to 8-bit RGB)")
    with Image.open(io.BytesIO(data)) as img:
        if img.format not in ("PNG", "JPEG"):
            raise DataError(f"expected a PNG or JPEG image, got {img.format}")
        img.load()
        if img.mode == "RGB":
            return np.asarray(img, dtype=np.uint8)
        if img.mode not in ("RGBA", "P", "PA"):
            raise DataError(f"expected RGB, got mode {img.mode}")
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint8)
        if rgba[..., 3].min() < 255:
            raise DataError(f"expected RGB, got mode {img.mode} with transparent pixels")
        return np.ascontiguousarray(rgba[..., :3])


def pixel_sha256(pixels: np.ndarray) -> str:
    """Content hash of the decoded pixels and their shape (stable across PNG encoders)."""
    h = hashlib.sha256()
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()


def label_key(label: int | None) -> str:
    """The manifest's key for a label: "0", "1", or "null" for unlabelled patches."""
    return "null" if label is None else str(int(label))
