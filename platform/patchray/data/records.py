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


def decode_image(data: bytes, *, source: str = "<bytes>") -> np.ndarray:
    """Decode PNG or JPEG bytes to an HxWx3 uint8 array; grey and RGBA are converted to RGB."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("RGB", "L", "RGBA", "P", "LA"):
                raise DataError(f"{source}: unsupported image mode {img.mode!r}; expected RGB")
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except DataError:
        raise
    except Exception as e:  # PIL raises many types for corrupt data
        raise DataError(f"{source}: not a readable PNG/JPEG image ({e})") from e


def pixel_sha256(pixels: np.ndarray) -> str:
    """Content hash of the decoded pixels and their shape (stable across PNG encoders)."""
    h = hashlib.sha256()
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).tobytes())
    return h.hexdigest()
