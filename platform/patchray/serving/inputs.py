"""Hostile-input hygiene for one patch: what the serving ingress accepts, checked before the
model sees it, with errors that name the field at fault and what was expected.

The format is sniffed from the content (magic bytes), never taken from a Content-Type or a
file name. Size, bit depth and channels are read from the image header before any pixel is
decoded, so a decompression bomb (a few KB of PNG claiming 30000x30000 pixels) costs one
header parse. Accepted patches are decoded by the one policy
(:func:`patchray.data.records.decode_image`) and padded exactly as training pads them.
Serving never shrinks a larger image: a 50x50 shrink of a 1000x1000 field of view is not
the patch the model was trained on, so the client is told instead.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image

from patchray.data.records import PNG_SIGNATURE, decode_image
from patchray.data.transforms import fit_to_size
from patchray.errors import DataError
from patchray.inference.preprocess import Preprocess

IMAGE_MEDIA_TYPES = ("image/png", "image/jpeg")

_JPEG_SOI = b"\xff\xd8\xff"
_FORMAT_EXPECTED = "image/png or image/jpeg (checked by content, not by header or file name)"
_RGB_EXPECTED = "8-bit RGB (palette or RGBA only when fully opaque)"
_B64_EXPECTED = "standard base64 (RFC 4648) with padding"
# decode_image converts the last three to RGB when every pixel is opaque, refuses the rest.
_HEADER_MODES = ("RGB", "RGBA", "P", "PA")
_MAX_REASON = 160  # characters of a library's own error text kept in a message


class InputError(Exception):
    """A request the client must fix: an HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str, *, field: str | None = None,
                 expected: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field
        self.expected = expected

    def body(self) -> dict:
        """The JSON error body; "error" is always there (tritonclient reads it on non-200)."""
        body = {"error": self.message, "field": self.field, "expected": self.expected}
        return {k: v for k, v in body.items() if v is not None}


def sniff_format(data: bytes) -> str | None:
    """"png" or "jpeg" by the first bytes of ``data``, else None."""
    head = bytes(data[:8])
    if head == PNG_SIGNATURE:
        return "png"
    if head[:3] == _JPEG_SOI:
        return "jpeg"
    return None


def image_header(data: bytes, *, field: str) -> tuple[str, int, int, str]:
    """(format, width, height, PIL mode) from the header alone: no pixel is decoded."""
    return _read_header(data, field, too_large=None)


def decode_patch(data: bytes, preprocess: Preprocess, *, field: str) -> np.ndarray:
    """One image's bytes -> uint8 ``(size, size, 3)``, refused before decoding unless the
    header says it is a PNG/JPEG of 8-bit RGB no larger than the model's patch."""
    size = preprocess.size
    fits = f"at most {size}x{size} pixels (the model's patch size)"
    fmt, width, height, mode = _read_header(data, field, too_large=fits)
    if width > size or height > size:
        raise InputError(
            422, f"{field}: image is {width}x{height} pixels, larger than the model's "
            f"{size}x{size} patch (serving does not shrink images)",
            field=field, expected=f"{fits}; got {width}x{height}")
    _refuse_non_rgb(data, fmt, mode, field)
    pixels = _decode(data, field)
    if pixels.shape[:2] != (height, width):  # the decoder must agree with the header we judged
        raise InputError(422, f"{field}: decoded {pixels.shape[1]}x{pixels.shape[0]} pixels but "
                         f"the header says {width}x{height}", field=field, expected=fits)
    return fit_to_size(pixels, size, preprocess.pad_value)  # only pads: both sides <= size


def check_pixel_tensor(array: np.ndarray, preprocess: Preprocess, *, field: str) -> np.ndarray:
    """Decoded pixels ``[N, H, W, 3]`` uint8 (H, W <= size) -> ``(N, size, size, 3)``, padded
    bottom/right with the model's pad value as training pads edge patches."""
    size = preprocess.size
    shape = f"[N, {size}, {size}, 3]"
    dtype = getattr(array, "dtype", type(array).__name__)
    if not isinstance(array, np.ndarray) or array.dtype != np.uint8:
        raise InputError(422, f"{field}: pixels are {dtype}; expected UINT8 (0-255 RGB)",
                         field=field, expected="UINT8")
    if array.ndim != 4 or array.shape[3] != 3:
        raise InputError(422, f"{field}: shape {list(array.shape)}; expected {shape} RGB pixels",
                         field=field, expected=shape)
    n, height, width = array.shape[:3]
    if not (1 <= height <= size and 1 <= width <= size):
        raise InputError(
            422, f"{field}: patches are {height}x{width} (HxW); the model takes at most "
            f"{size}x{size} (smaller ones are padded, larger ones are not shrunk)",
            field=field, expected=f"{shape} with height and width from 1 to {size}")
    if height == size and width == size:
        return np.ascontiguousarray(array)
    out = np.full((n, size, size, 3), preprocess.pad_value, dtype=np.uint8)
    out[:, :height, :width] = array
    return out


def strict_b64decode(text: str, *, field: str) -> bytes:
    """Standard base64 with padding; whitespace, URL-safe letters or bad padding are refused
    (a lenient decoder would silently score different bytes than the client meant)."""
    if not isinstance(text, str):
        raise InputError(400, f"{field}: expected a base64 string, got {type(text).__name__}",
                         field=field, expected=_B64_EXPECTED)
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: non-ASCII characters
        raise InputError(400, f"{field}: invalid base64 ({_reason(e)})", field=field,
                         expected=_B64_EXPECTED) from None


def _read_header(data: bytes, field: str, too_large: str | None) -> tuple[str, int, int, str]:
    if not data:
        raise InputError(400, f"{field}: empty; expected the bytes of a PNG or JPEG image",
                         field=field, expected=_FORMAT_EXPECTED)
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(415, f"{field}: not a PNG or JPEG image (judged by its first bytes)",
                         field=field, expected=_FORMAT_EXPECTED)
    try:
        with Image.open(io.BytesIO(data), formats=(fmt.upper(),)) as img:  # lazy: header only
            (width, height), mode, found = img.size, img.mode, img.format
    except Image.DecompressionBombError:  # PIL's own ceiling, hit before ours
        raise InputError(422, f"{field}: image dimensions are too large to decode safely",
                         field=field, expected=too_large or "a patch-sized image") from None
    except Exception as e:  # PIL raises many types for truncated or foreign headers
        raise InputError(400, f"{field}: unreadable {fmt.upper()} header ({_reason(e)})",
                         field=field, expected=f"a complete {fmt.upper()} image") from None
    if found not in ("PNG", "JPEG"):  # e.g. MPO: JPEG magic, several pictures
        raise InputError(415, f"{field}: {found} image; expected a single PNG or JPEG",
                         field=field, expected=_FORMAT_EXPECTED)
    return fmt, width, height, mode


def _refuse_non_rgb(data: bytes, fmt: str, mode: str, field: str) -> None:
    # PIL opens a 16-bit RGB(A) PNG as mode RGB(A), so the IHDR's bit depth is the witness.
    if fmt == "png" and data[12:16] == b"IHDR" and len(data) > 24 and data[24] > 8:
        raise InputError(422, f"{field}: {data[24]}-bit PNG; expected 8 bits per channel",
                         field=field, expected=_RGB_EXPECTED)
    if mode not in _HEADER_MODES:
        raise InputError(422, f"{field}: image mode {mode}; expected 8-bit RGB "
                         "(grey, CMYK and 16-bit images are refused)",
                         field=field, expected=_RGB_EXPECTED)


def _decode(data: bytes, field: str) -> np.ndarray:
    try:
        return decode_image(data)
    except DataError as e:
        reason = str(e)
        if reason.startswith("not a readable"):  # truncated or corrupt pixel data
            raise InputError(400, f"{field}: {_reason(reason)}", field=field,
                             expected="a complete PNG or JPEG image") from None
        raise InputError(422, f"{field}: {_reason(reason)}", field=field,
                         expected=_RGB_EXPECTED) from None


def _reason(error: object) -> str:
    text = str(error)
    return text if len(text) <= _MAX_REASON else text[:_MAX_REASON - 3] + "..."
