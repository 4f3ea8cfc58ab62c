"""Hostile-input hygiene for one patch: format by content, size and bit depth from the header
before any decoding, the one decode policy, training's padding, strict base64."""

import base64
import io
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from patchray.inference.preprocess import Preprocess
from patchray.serving import inputs
from patchray.serving.inputs import (
    IMAGE_MEDIA_TYPES,
    InputError,
    check_pixel_tensor,
    decode_patch,
    image_header,
    sniff_format,
    strict_b64decode,
)

P = Preprocess(size=50)


def _pixels(h: int = 50, w: int = 50, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _crafted_png(width: int, height: int, depth: int, colour: int, row_bytes: int,
                 plte: bytes | None = None) -> bytes:
    """A valid PNG of all-zero rows, compressed as it streams (no big image in memory)."""
    z, block = zlib.compressobj(1), b"\0" * ((row_bytes + 1) * 1000)
    idat = [z.compress(block) for _ in range(height // 1000)]
    idat += [z.compress(b"\0" * ((row_bytes + 1) * (height % 1000))), z.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + (_chunk(b"PLTE", plte) if plte else b"")
            + _chunk(b"IDAT", b"".join(idat)) + _chunk(b"IEND", b""))


def _refused(data: bytes, field: str = "files[2]") -> InputError:
    with pytest.raises(InputError) as info:
        decode_patch(data, P, field=field)
    err = info.value
    assert err.field == field and err.message.startswith(f"{field}: ") and err.expected
    return err


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """30000x30000 1-bit palette PNG: ~0.5 MB on the wire, 900 M pixels once decoded."""
    return _crafted_png(30000, 30000, 1, 3, 3750, plte=b"\0\0\0\xff\xff\xff")


def test_error_body_always_has_error_and_omits_what_is_unknown():
    assert InputError(400, "body: empty").body() == {"error": "body: empty"}
    err = InputError(422, "x: bad", field="x", expected="y")
    assert (err.status, str(err)) == (422, "x: bad")
    assert err.body() == {"error": "x: bad", "field": "x", "expected": "y"}


def test_format_is_sniffed_from_the_bytes_not_the_name():
    png, jpeg = _encode(Image.fromarray(_pixels())), _encode(Image.fromarray(_pixels()), "JPEG")
    assert IMAGE_MEDIA_TYPES == ("image/png", "image/jpeg")
    assert (sniff_format(png), sniff_format(jpeg)) == ("png", "jpeg")
    # a PNG uploaded as "patch.jpg" is still a PNG: nothing but the content is consulted
    assert image_header(png, field="files[0]") == ("png", 50, 50, "RGB")
    assert image_header(jpeg, field="files[0]") == ("jpeg", 50, 50, "RGB")
    for foreign in (_encode(Image.fromarray(_pixels()), "GIF"),
                    _encode(Image.fromarray(_pixels()), "BMP"), b"hello, world"):
        assert sniff_format(foreign) is None
        err = _refused(foreign)
        assert err.status == 415 and "checked by content" in err.expected


def test_empty_and_truncated_images_are_bad_requests():
    assert _refused(b"").status == 400
    png = _encode(Image.fromarray(_pixels()))
    assert _refused(png[:20]).status == 400  # header cut short
    truncated = _refused(png[: len(png) // 2])  # header intact, pixels cut short
    assert truncated.status == 400 and "truncated" in truncated.message
    assert "Traceback" not in truncated.message and len(truncated.message) < 250


def test_larger_patches_are_refused_not_shrunk():
    err = _refused(_encode(Image.fromarray(_pixels(51, 60))), field="instances[0].image")
    assert err.status == 422 and err.field == "instances[0].image"
    assert err.expected == "at most 50x50 pixels (the model's patch size); got 60x51"


def test_a_decompression_bomb_is_refused_from_its_header(bomb, monkeypatch):
    calls = []
    monkeypatch.setattr(inputs, "decode_image", lambda *a, **k: calls.append(a))
    big = _crafted_png(5000, 5000, 1, 3, 625, plte=b"\0\0\0\xff\xff\xff")  # under PIL's limit
    for data in (bomb, big):
        assert len(data) < 600_000
        start = time.perf_counter()
        err = _refused(data, field="body")
        assert time.perf_counter() - start < 0.2
        assert err.status == 422 and err.expected.startswith("at most 50x50 pixels")
    assert calls == []  # the decoder never saw either


def test_grey_cmyk_16_bit_and_transparent_images_are_refused():
    pixels = _pixels()
    grey = _encode(Image.fromarray(pixels[..., 0], "L"))
    grey_alpha = _encode(Image.fromarray(pixels[..., :2].copy(), "LA"))
    grey16 = _encode(Image.fromarray(pixels[..., 0].astype(np.uint16) * 257))
    rgb16 = _crafted_png(40, 30, 16, 2, 40 * 6)  # PIL opens it as "RGB": only IHDR tells
    cmyk = _encode(Image.fromarray(pixels).convert("CMYK"), "JPEG")
    alpha = np.dstack([pixels, np.full((50, 50), 255, np.uint8)])
    alpha[3, 4, 3] = 0
    transparent = _encode(Image.fromarray(alpha, "RGBA"))
    for data in (grey, grey_alpha, grey16, rgb16, cmyk, transparent):
        err = _refused(data)
        assert err.status == 422 and "8-bit RGB" in err.expected
    assert "16-bit" in _refused(rgb16).message and "mode CMYK" in _refused(cmyk).message
    assert "transparent" in _refused(transparent).message


def test_opaque_alpha_palette_and_jpeg_are_accepted():
    pixels = _pixels()
    opaque = np.dstack([pixels, np.full((50, 50), 255, np.uint8)])
    np.testing.assert_array_equal(
        decode_patch(_encode(Image.fromarray(opaque, "RGBA")), P, field="body"), pixels)
    palette = Image.fromarray(pixels).quantize(16)
    np.testing.assert_array_equal(decode_patch(_encode(palette), P, field="body"),
                                  np.asarray(palette.convert("RGB")))
    jpeg = decode_patch(_encode(Image.fromarray(pixels), "JPEG", quality=95), P, field="body")
    assert jpeg.shape == (50, 50, 3) and jpeg.dtype == np.uint8


@pytest.mark.parametrize("pad_value", [255, 0])
def test_smaller_patches_are_padded_as_training_pads_them(pad_value):
    p = Preprocess(size=50, pad_value=pad_value)
    edge = _pixels(32, 41, seed=5)
    png = _encode(Image.fromarray(edge))
    out = decode_patch(png, p, field="body")
    assert out.shape == (50, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:32, :41], edge)
    assert (out[32:] == pad_value).all() and (out[:, 41:] == pad_value).all()
    np.testing.assert_array_equal(out, p.decode(png))


def test_strict_base64():
    data = _encode(Image.fromarray(_pixels(4, 4)))
    text = base64.b64encode(data).decode()
    assert strict_b64decode(text, field="instances[0].image") == data
    assert strict_b64decode("YWI=", field="body") == b"ab"
    for bad in (text[:-2] + "!!", "YWI", "YWI==", text[:8] + "\n" + text[8:], "YW I=",
                base64.urlsafe_b64encode(b"\xfb\xff\xfe").decode(), "é===", None, b"YWI="):
        with pytest.raises(InputError) as info:
            strict_b64decode(bad, field="instances[0].image")
        assert info.value.status == 400 and info.value.field == "instances[0].image"
        assert info.value.expected == "standard base64 (RFC 4648) with padding"


def test_pixel_tensors_are_checked_and_padded():
    batch = np.stack([_pixels(30, 50, seed=1), _pixels(30, 50, seed=2)])
    out = check_pixel_tensor(batch, Preprocess(size=50, pad_value=7), field="inputs[0]")
    assert out.shape == (2, 50, 50, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :30], batch)
    assert (out[:, 30:] == 7).all()
    full = np.stack([_pixels()])
    np.testing.assert_array_equal(check_pixel_tensor(full, P, field="inputs[0]"), full)


@pytest.mark.parametrize("array, expected", [
    (np.zeros((1, 50, 50, 3), np.float32), "UINT8"),
    (np.zeros((50, 50, 3), np.uint8), "[N, 50, 50, 3]"),
    (np.zeros((1, 50, 50, 4), np.uint8), "[N, 50, 50, 3]"),
    (np.zeros((1, 51, 50, 3), np.uint8), "[N, 50, 50, 3] with height and width from 1 to 50"),
    (np.zeros((1, 50, 0, 3), np.uint8), "[N, 50, 50, 3] with height and width from 1 to 50"),
])
def test_pixel_tensors_of_the_wrong_kind_are_refused(array, expected):
    with pytest.raises(InputError) as info:
        check_pixel_tensor(array, P, field="inputs[0]")
    err = info.value
    assert (err.status, err.field, err.expected) == (422, "inputs[0]", expected)
    assert err.message.startswith("inputs[0]: ")
