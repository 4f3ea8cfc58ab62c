"""Hostile and wrong input: the exact status code, a JSON error naming the field, no stack
trace, and a replica that goes on serving."""

from __future__ import annotations

import base64
import socket
import time
import zlib
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from tests.integration.serving.conftest import encode, tissue

pytestmark = pytest.mark.integration


def _bomb_png(side: int) -> bytes:
    """A valid PNG of side x side black RGB pixels, a few hundred KB compressed."""
    import struct

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    row = b"\x00" + b"\x00" * (3 * side)
    raw = zlib.compress(row * 64, 9)  # only the first rows: the header alone must refuse it
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", raw) + chunk(b"IEND", b"")


def _assert_error(r: requests.Response, status: int, field: str | None = None) -> dict:
    assert r.status_code == status, (r.status_code, r.text[:500])
    body = r.json()
    assert body["error"] and "Traceback" not in r.text and 'File "' not in r.text
    if field is not None:
        assert body.get("field") == field, body
    return body


@pytest.fixture
def still_serving(service):
    yield
    r = service.classify(encode(tissue()))
    assert r.status_code == 200, r.text  # the replica survived whatever the test sent


def test_every_route_but_health_needs_a_key(service, still_serving):
    for path in ("/healthz", "/v2/health/live", "/v2/health/ready"):
        assert requests.get(service.url + path, timeout=30).status_code == 200, path
    for method, path in [("get", "/v1/model"), ("get", "/v2"), ("get", "/openapi.json"),
                         ("get", f"/v2/models/{service.model}"),
                         ("post", "/v1/classify"), ("post", f"/v2/models/{service.model}/infer")]:
        r = getattr(requests, method)(service.url + path, timeout=30)
        _assert_error(r, 401)
        assert r.headers.get("WWW-Authenticate") == "Bearer", path
    r = requests.post(f"{service.url}/v1/classify", data=encode(tissue()), timeout=30,
                      headers={"Authorization": "Bearer prk_00000000_wrong",
                               "Content-Type": "image/png"})
    _assert_error(r, 401)
    r = requests.post(f"{service.url}/v1/classify", data=encode(tissue()), timeout=30,
                      headers={"Authorization": f"Basic {service.key}"})
    _assert_error(r, 401)


def test_a_revoked_key_stops_working_within_the_refresh_interval(service, still_serving):
    from patchray.serving.keys import KeyStore

    store = KeyStore(service.args.keys)
    record, token = store.create("lab-revoked")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "image/png"}
    deadline = time.time() + 3 * service.args.keys_refresh_s + 10
    status = None
    while time.time() < deadline:  # a new key shows up after one refresh too
        status = requests.post(f"{service.url}/v1/classify", data=encode(tissue()),
                               headers=headers, timeout=30).status_code
        if status == 200:
            break
        time.sleep(0.5)
    assert status == 200
    store.revoke(record.key_id)
    deadline = time.time() + 3 * service.args.keys_refresh_s + 10
    while time.time() < deadline:
        r = requests.post(f"{service.url}/v1/classify", data=encode(tissue()),
                          headers=headers, timeout=30)
        if r.status_code != 200:
            break
        time.sleep(0.5)
    _assert_error(r, 403)


def test_a_body_over_the_cap_is_refused_before_it_is_sent(service, still_serving):
    """Content-Length over the cap and only a few bytes sent: the 413 comes back without
    the server waiting for the rest."""
    url = urlparse(service.url)
    with socket.create_connection((url.hostname, url.port), timeout=15) as s:
        s.sendall((f"POST /v1/classify HTTP/1.1\r\nHost: {url.hostname}\r\n"
                   f"Authorization: Bearer {service.key}\r\nContent-Type: image/png\r\n"
                   f"Content-Length: {500 * 1024 * 1024}\r\n\r\n").encode() + b"\x89PNG")
        head = s.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head[:300]
    r = service.classify(b"\x89PNG" + b"\x00" * (service.args.max_body_bytes + 1))
    _assert_error(r, 413, "body")


def test_too_many_patches_in_one_request(service, still_serving):
    n = service.args.max_patches_per_request + 1
    files = [("files", (f"p{i}.png", encode(tissue(seed=i)), "image/png")) for i in range(n)]
    r = requests.post(f"{service.url}/v1/classify", files=files, headers=service.headers(),
                      timeout=60)
    assert r.status_code in (400, 413), r.text  # the multipart parser's own file cap, or ours
    body = {"instances": [{"image_b64": base64.b64encode(encode(tissue())).decode()}] * n}
    r = requests.post(f"{service.url}/v1/classify", json=body, headers=service.headers(),
                      timeout=60)
    _assert_error(r, 413, "patches")


@pytest.mark.parametrize("content_type", ["text/plain", "application/xml", "image/gif", ""])
def test_other_content_types_get_415(service, content_type, still_serving):
    r = requests.post(f"{service.url}/v1/classify", data=encode(tissue()), timeout=30,
                      headers=service.headers(**{"Content-Type": content_type}))
    _assert_error(r, 415, "Content-Type")


def test_formats_are_checked_by_magic_bytes(service, still_serving):
    from PIL import Image
    import io

    buf = io.BytesIO()
    Image.fromarray(tissue()).save(buf, format="GIF")
    _assert_error(service.classify(buf.getvalue(), "image/png"), 415, "body")
    _assert_error(service.classify(b"<svg xmlns='http://www.w3.org/2000/svg'/>"), 415, "body")


def test_decompression_bomb_is_refused_from_its_header(service, still_serving):
    bomb = _bomb_png(40_000)  # 1.6 gigapixels declared, a few KB sent
    assert len(bomb) < 200_000
    start = time.perf_counter()
    body = _assert_error(service.classify(bomb), 422, "body")
    assert time.perf_counter() - start < 5
    assert "50x50" in body["expected"]


def test_a_whole_image_is_not_taken_for_a_patch(service, still_serving):
    big = np.random.default_rng(1).integers(0, 255, (1000, 1000, 3), dtype=np.uint8)
    body = _assert_error(service.classify(encode(big)), 422, "body")
    assert "1000x1000" in body["error"] + body["expected"]
    files = [("files", ("ok.png", encode(tissue()), "image/png")),
             ("files", ("big.png", encode(big), "image/png"))]
    r = requests.post(f"{service.url}/v1/classify", files=files, headers=service.headers(),
                      timeout=60)
    _assert_error(r, 422, "files[1]")


@pytest.mark.parametrize("case", ["grey", "grey-alpha", "16-bit", "transparent"])
def test_wrong_channels_or_bit_depth_get_422(service, case, still_serving):
    from PIL import Image
    import io

    pixels = tissue()
    buf = io.BytesIO()
    if case == "grey":
        Image.fromarray(pixels[..., 0]).save(buf, format="PNG")
    elif case == "grey-alpha":
        Image.fromarray(pixels[..., 0]).convert("LA").save(buf, format="PNG")
    elif case == "16-bit":
        Image.fromarray(pixels[..., 0].astype(np.uint16) * 257).save(buf, format="PNG")
    else:
        rgba = np.dstack([pixels, np.full(pixels.shape[:2], 128, np.uint8)])
        Image.fromarray(rgba, "RGBA").save(buf, format="PNG")
    _assert_error(service.classify(buf.getvalue()), 422, "body")


def test_malformed_json_base64_and_schema(service, still_serving):
    url, h = f"{service.url}/v1/classify", service.headers(**{"Content-Type": "application/json"})
    _assert_error(requests.post(url, data=b"{not json", headers=h, timeout=30), 400, "body")
    bad = {"instances": [{"image_b64": "not*base64!"}]}
    _assert_error(requests.post(url, json=bad, headers=service.headers(), timeout=30), 400,
                  "instances[0].image_b64")
    unpadded = base64.b64encode(encode(tissue())).decode().rstrip("=") + "A"
    r = requests.post(url, json={"instances": [{"image_b64": unpadded}]},
                      headers=service.headers(), timeout=30)
    _assert_error(r, 400, "instances[0].image_b64")
    r = requests.post(url, json={"images": []}, headers=service.headers(), timeout=30)
    _assert_error(r, 422)
    _assert_error(service.classify(b""), 400, "body")
    _assert_error(service.classify(encode(tissue())[:60]), 400, "body")  # truncated PNG


def test_unknown_model_version_and_route_get_404(service, still_serving):
    h = service.headers()
    _assert_error(requests.get(f"{service.url}/v2/models/nope", headers=h, timeout=30), 404)
    _assert_error(requests.get(f"{service.url}/v2/models/{service.model}/versions/999",
                               headers=h, timeout=30), 404)
    r = requests.post(f"{service.url}/v2/models/nope/infer", json={"inputs": []}, headers=h,
                      timeout=30)
    _assert_error(r, 404)
    _assert_error(requests.get(f"{service.url}/v9/anything", headers=h, timeout=30), 404)
