"""The patch record's encodings and the one image decoder policy (ingest and serving)."""

import io

import numpy as np
import pytest
from PIL import Image

from patchray.data.records import decode_image, encode_png, pixel_sha256
from patchray.errors import DataError


def _png(img: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _pixels(h: int = 8, w: int = 8) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_round_trip_and_hash():
    pixels = np.random.default_rng(0).integers(0, 256, (32, 50, 3), dtype=np.uint8)
    back = decode_image(encode_png(pixels))
    assert np.array_equal(back, pixels)
    assert pixel_sha256(back) == pixel_sha256(pixels)


def test_decode_rejects_non_image_with_source():
    with pytest.raises(DataError, match="patch.png: not a readable PNG/JPEG"):
        decode_image(b"not an image", source="patch.png")


def test_rgb_decoding_accepts_opaque_alpha_and_palette_but_not_grey_cmyk_or_transparency():
    pixels = _pixels()
    opaque = np.dstack([pixels, np.full((8, 8), 255, np.uint8)])
    assert np.array_equal(decode_image(_png(Image.fromarray(opaque, "RGBA"))), pixels)
    palette = Image.fromarray(pixels).quantize(16)
    assert decode_image(_png(palette)).shape == (8, 8, 3)
    see_through = opaque.copy()
    see_through[0, 0, 3] = 0
    with pytest.raises(DataError, match="expected RGB, got mode RGBA with transparent pixels"):
        decode_image(_png(Image.fromarray(see_through, "RGBA")))
    with pytest.raises(DataError, match="expected RGB, got mode CMYK"):
        decode_image(_png(Image.fromarray(pixels).convert("CMYK"), "JPEG"))
    with pytest.raises(DataError, match="expected a PNG or JPEG image, got GIF"):
        decode_image(_png(palette, "GIF"))


def test_grey_and_16_bit_images_are_refused_not_converted():
    """An H&E model fed a grey patch would score a stain it never saw; a 16-bit PNG would be
    silently cut to 8 bits by Pillow. Both are refused, naming where the bytes came from."""
    with pytest.raises(DataError, match="request body: expected RGB, got mode L"):
        decode_image(_png(Image.fromarray(_pixels()[..., 0], "L")), source="request body")
    grey16 = Image.fromarray(_pixels()[..., 0].astype(np.uint16) * 257)  # mode I;16
    with pytest.raises(DataError, match="16-bit PNG"):
        decode_image(_png(grey16))
    rgb48 = _png(Image.fromarray(_pixels()))
    rgb48 = rgb48[:24] + bytes([16]) + rgb48[25:]  # IHDR bit depth 16 (Pillow would take it)
    with pytest.raises(DataError, match="expected 8 bits per channel, got a 16-bit PNG"):
        decode_image(rgb48)


def test_jpeg_rgb_decodes():
    pixels = _pixels(16, 16)
    out = decode_image(_png(Image.fromarray(pixels), "JPEG"))
    assert out.shape == (16, 16, 3) and out.dtype == np.uint8
