"""KServe's Open Inference Protocol, spoken by a real third-party client (tritonclient.http)."""

from __future__ import annotations

from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from tests.integration.serving.conftest import encode, tissue

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(service):
    import tritonclient.http as httpclient

    url = urlparse(service.url)
    with httpclient.InferenceServerClient(f"{url.hostname}:{url.port}") as c:
        yield c


def _native(service, patches: list[bytes]) -> np.ndarray:
    files = [("files", (f"p{i}.png", p, "image/png")) for i, p in enumerate(patches)]
    r = requests.post(f"{service.url}/v1/classify", files=files, headers=service.headers(),
                      timeout=60)
    return np.array([p["probability"] for p in r.json()["predictions"]])


def test_health_and_metadata(client, service):
    assert client.is_server_live()
    assert client.is_server_ready()
    h = service.headers()
    assert client.is_model_ready(service.model, headers=h)
    meta = client.get_model_metadata(service.model, headers=h)
    assert meta["name"] == service.model and meta["versions"] == [service.version]
    inputs = {i["name"]: i for i in meta["inputs"]}
    assert inputs["patches"]["datatype"] == "UINT8"
    assert inputs["patches"]["shape"] == [-1, service.size, service.size, 3]
    assert inputs["images"]["datatype"] == "BYTES"
    server = client.get_server_metadata(headers=h)
    assert "binary_tensor_data" in server["extensions"]


@pytest.mark.parametrize("binary", [True, False])
def test_infer_uint8_tensor_matches_the_native_api(client, service, binary):
    import tritonclient.http as httpclient

    pixels = np.stack([tissue(seed=s) for s in range(4)])
    tensor = httpclient.InferInput("patches", list(pixels.shape), "UINT8")
    tensor.set_data_from_numpy(pixels, binary_data=binary)
    outputs = [httpclient.InferRequestedOutput("probability", binary_data=binary),
               httpclient.InferRequestedOutput("label", binary_data=binary)]
    result = client.infer(service.model, [tensor], outputs=outputs, headers=service.headers())
    probability = result.as_numpy("probability")
    assert probability.shape == (4,) and probability.dtype == np.float32
    native = _native(service, [encode(p) for p in pixels])
    np.testing.assert_allclose(probability, native, atol=1e-5)
    response = result.get_response()
    assert response["model_name"] == service.model
    assert response["model_version"] == service.version
    threshold = response["parameters"]["threshold"]
    assert result.as_numpy("label").tolist() == [int(p >= threshold) for p in probability]


def test_infer_bytes_png_images_and_a_versioned_route(client, service):
    import tritonclient.http as httpclient

    patches = [encode(tissue(seed=s)) for s in range(3)]
    tensor = httpclient.InferInput("images", [3], "BYTES")
    tensor.set_data_from_numpy(np.array(patches, dtype=np.object_), binary_data=True)
    result = client.infer(service.model, [tensor], model_version=service.version,
                          headers=service.headers())
    np.testing.assert_allclose(result.as_numpy("probability"), _native(service, patches),
                               atol=1e-5)
    assert set(result.get_response()["outputs"][i]["name"] for i in range(3)) == {
        "probability", "label", "needs_review"}


def test_errors_reach_the_client_as_exceptions_with_the_message(client, service):
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    wrong = np.zeros((1, 1000, 1000, 3), dtype=np.uint8)
    tensor = httpclient.InferInput("patches", list(wrong.shape), "UINT8")
    tensor.set_data_from_numpy(wrong)
    with pytest.raises(InferenceServerException, match="50x50|50, 50"):
        client.infer(service.model, [tensor], headers=service.headers())
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("no-such-model", headers=service.headers())
    with pytest.raises(InferenceServerException):
        client.get_model_metadata(service.model)  # no key
