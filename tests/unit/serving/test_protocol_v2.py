"""The KServe v2 codec against tritonclient's own encoder and decoder (no server involved)."""

import io
import json
import struct

import numpy as np
import pytest
from PIL import Image
from tritonclient.http import InferenceServerClient, InferInput, InferRequestedOutput

from patchray.serving.inputs import InputError
from patchray.serving.protocol_v2 import (
    HEADER_LENGTH,
    InferRequest,
    RequestedOutput,
    Tensor,
    encode_infer_response,
    error_body,
    model_metadata,
    parse_infer_request,
    server_metadata,
    wants_binary,
)


def _pixels(n: int = 2, size: int = 50) -> np.ndarray:
    return np.random.default_rng(n).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _request(*inputs: InferInput, outputs=None, **kwargs) -> tuple[bytes, int | None]:
    return InferenceServerClient.generate_request_body(list(inputs), outputs=outputs, **kwargs)


def _pixel_input(pixels: np.ndarray, binary: bool) -> InferInput:
    tensor = InferInput("image", list(pixels.shape), "UINT8")
    return tensor.set_data_from_numpy(pixels, binary_data=binary)


def _json(header: dict) -> bytes:
    return json.dumps(header).encode()


def _error(body: bytes, header_length=None, **kwargs) -> InputError:
    with pytest.raises(InputError) as info:
        parse_infer_request(body, header_length, **kwargs)
    err = info.value
    assert err.message.startswith(f"{err.field}: ") and err.expected
    return err


@pytest.mark.parametrize("binary", [True, False])
def test_uint8_pixels_round_trip_from_tritonclient(binary):
    pixels = _pixels()
    body, json_size = _request(_pixel_input(pixels, binary), request_id="r-1",
                               outputs=[InferRequestedOutput("probability", binary_data=binary)])
    assert (json_size is not None) == binary
    request = parse_infer_request(body, json_size)
    assert request.id == "r-1" and len(request.inputs) == 1
    tensor = request.inputs[0]
    assert (tensor.name, tensor.datatype, tensor.shape) == ("image", "UINT8", [2, 50, 50, 3])
    assert tensor.data.dtype == np.uint8 and "binary_data_size" not in tensor.parameters
    np.testing.assert_array_equal(tensor.data, pixels)
    assert request.outputs == [RequestedOutput("probability", binary)]
    assert wants_binary(request, "probability") is binary


@pytest.mark.parametrize("binary", [True, False])
def test_bytes_inputs_round_trip_from_tritonclient(binary):
    if binary:  # raw PNG bytes, length-prefixed after the JSON
        items = [_png(p) for p in _pixels(3)]
        array = np.array(items, dtype=np.object_)
    else:  # JSON carries BYTES as UTF-8 strings (base64 text, for images)
        items = [b"aGVsbG8=", b"", "caf\u00e9".encode()]
        array = np.array([s.decode() for s in items], dtype=np.object_)
    tensor = InferInput("image_bytes", [3], "BYTES").set_data_from_numpy(array, binary_data=binary)
    body, json_size = _request(tensor)
    request = parse_infer_request(body, json_size)
    assert request.inputs[0].data == items and request.inputs[0].datatype == "BYTES"
    # no outputs listed: tritonclient asks for every output in binary
    assert request.outputs == [] and request.binary_output_default is True
    assert wants_binary(request, "probability") is True


def test_mixed_binary_and_json_inputs_in_one_request():
    pixels, scale = _pixels(1), np.array([[0.5, 2.0]], np.float32)
    extra = InferInput("scale", [1, 2], "FP32").set_data_from_numpy(scale, binary_data=False)
    ids = np.array([[7], [-3]], np.int64)
    labels = InferInput("ids", [2, 1], "INT64").set_data_from_numpy(ids, binary_data=True)
    body, json_size = _request(_pixel_input(pixels, True), extra, labels, parameters={"k": 1})
    request = parse_infer_request(body, str(json_size))  # straight from the HTTP header
    np.testing.assert_array_equal(request.inputs[0].data, pixels)
    np.testing.assert_array_equal(request.inputs[1].data, scale)
    np.testing.assert_array_equal(request.inputs[2].data, ids)
    assert request.inputs[1].data.dtype == np.float32 and request.inputs[2].data.dtype == np.int64
    assert request.parameters == {"k": 1, "binary_data_output": True}


def test_nested_json_data_is_read_row_major():
    header = {"inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 3],
                          "data": [[1, 2, 3], [4, 5, 6]]}]}
    data = parse_infer_request(_json(header), None).inputs[0].data
    np.testing.assert_array_equal(data, np.arange(1, 7, dtype=np.int32).reshape(2, 3))
    header["inputs"][0]["data"] = [[1, 2], [3, 4], [5, 6]]  # six elements, wrong nesting
    assert _error(_json(header)).field == "inputs[0].data"


@pytest.mark.parametrize("binary", [True, False, {"probability"}, set()])
def test_response_round_trips_through_tritonclient(binary):
    probability = np.array([[0.125, 0.875], [0.9, 0.1]], np.float32)
    labels = [b"benign", b"tumour"]
    body, headers = encode_infer_response(
        model_name="idc", model_version="3", request_id="r-9", binary=binary,
        outputs=[Tensor("probability", "FP32", [2, 2], probability),
                 Tensor("label", "BYTES", [2], labels)],
        parameters={"patch_size": 50})
    header_length = headers.get(HEADER_LENGTH)
    all_json = binary is False or binary == set()
    assert (header_length is None) == all_json
    assert headers["Content-Type"] == ("application/json" if all_json
                                       else "application/octet-stream")
    result = InferenceServerClient.parse_response_body(
        body, header_length=None if header_length is None else int(header_length))
    np.testing.assert_array_equal(result.as_numpy("probability"), probability)
    assert result.as_numpy("probability").dtype == np.float32
    assert list(result.as_numpy("label")) == (labels if binary is True else ["benign", "tumour"])
    response = result.get_response()
    assert (response["model_name"], response["model_version"], response["id"]) == ("idc", "3",
                                                                                   "r-9")
    assert response["parameters"] == {"patch_size": 50}
    if all_json:
        assert json.loads(body)["outputs"][0]["data"] == [0.125, 0.875, 0.8999999761581421,
                                                          0.10000000149011612]


def test_wants_binary_per_output_beats_the_request_default():
    request = InferRequest(id=None, inputs=[], parameters={}, binary_output_default=True,
                           outputs=[RequestedOutput("a", False), RequestedOutput("b", None)])
    assert (wants_binary(request, "a"), wants_binary(request, "b"),
            wants_binary(request, "c")) == (False, True, True)
    request.binary_output_default = False
    assert wants_binary(request, "b") is False


def test_metadata_and_error_bodies():
    assert server_metadata("patchray", "0.1.0") == {
        "name": "patchray", "version": "0.1.0", "extensions": ["binary_tensor_data"]}
    spec = [{"name": "image", "datatype": "UINT8", "shape": [-1, 50, 50, 3]}]
    meta = model_metadata("idc", ["3"], "openvino", spec, [])
    assert meta == {"name": "idc", "versions": ["3"], "platform": "openvino", "inputs": spec,
                    "outputs": []}
    assert error_body("inputs: missing") == {"error": "inputs: missing"}


def _one(**tensor) -> bytes:
    spec = {"name": "x", "datatype": "UINT8", "shape": [2], "data": [1, 2]} | tensor
    return _json({"inputs": [spec]})


@pytest.mark.parametrize("body, field", [
    (b"{not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"inputs": [{"name": "x", "datatype": "FP32", "shape": [1], "data": [NaN]}]}', "body"),
    (_json({}), "inputs"),
    (_json({"inputs": {"name": "x"}}), "inputs"),
    (_json({"inputs": []}), "inputs"),
    (_json({"id": 5, "inputs": []}), "id"),
    (_one(name=""), "inputs[0].name"),
    (_one(datatype="BF16"), "inputs[0].datatype"),
    (_one(shape=[-1]), "inputs[0].shape"),
    (_one(shape=[2.0]), "inputs[0].shape"),
    (_one(shape=[True, 2]), "inputs[0].shape"),
    (_one(data=[1, 2, 3]), "inputs[0].data"),
    (_one(data=[1, 256]), "inputs[0].data"),
    (_one(data=[1, 2.5]), "inputs[0].data"),
    (_one(data=[1, "2"]), "inputs[0].data"),
    (_one(data=3), "inputs[0].data"),
    (_one(datatype="FP32", data=[1, 1e300]), "inputs[0].data"),
    (_one(datatype="BYTES", data=["a", 1]), "inputs[0].data"),
    (_json({"inputs": [{"name": "x", "datatype": "UINT8", "shape": [2]}]}), "inputs[0].data"),
    (b"[" * 100_000, "body"),
    (_json({"inputs": json.loads(_one())["inputs"], "outputs": [{"name": "p", "parameters":
                                                                {"classification": 2}}]}),
     "outputs[0].parameters.classification"),
    (_one(parameters={"shared_memory_region": "r"}), "inputs[0].parameters.shared_memory_region"),
    (_one(parameters={"binary_data_size": 2}), "inputs[0].parameters.binary_data_size"),
    (_json({"inputs": [json.loads(_one())["inputs"][0]] * 2}), "inputs[1].name"),
    (_json({"inputs": json.loads(_one())["inputs"], "outputs": [{"name": "p", "parameters":
                                                                {"binary_data": "yes"}}]}),
     "outputs[0].parameters.binary_data"),
    (_json({"inputs": json.loads(_one())["inputs"], "parameters": {"binary_data_output": 1}}),
     "parameters.binary_data_output"),
])
def test_malformed_requests_are_bad_requests(body, field):
    err = _error(body)
    assert (err.status, err.field) == (400, field)


def test_messages_name_the_expected_values():
    err = _error(_one(data=[1]))
    assert err.message == "inputs[0].data: 1 elements; expected 2 (the product of shape [2])"
    assert "UINT8, " in _error(_one(datatype="STRING")).expected
    assert "malformed JSON" in _error(b"{").message


def test_header_length_must_fit_the_body():
    body, json_size = _request(_pixel_input(_pixels(1), True))
    for bad in (-1, len(body) + 1, "12x", "", 3.0, True):
        err = _error(body, bad)
        assert (err.status, err.field) == (400, HEADER_LENGTH)
    # without the header, the binary tail makes the JSON unreadable, and the message says why
    err = _error(body, None)
    assert err.status == 400 and HEADER_LENGTH in err.message


def test_binary_sizes_must_add_up_to_the_body():
    body, json_size = _request(_pixel_input(_pixels(1), True))
    stray = _error(body + b"\0", json_size)  # one byte more than the tensors claim
    assert (stray.status, stray.field) == (400, "body")
    assert "7501 bytes follow the JSON header" in stray.message
    short = _error(body[:-1], json_size)  # one byte less
    assert (short.status, short.field) == (400, "inputs[0].parameters.binary_data_size")
    assert "7500 bytes claimed but only 7499 remain" in short.message
    header = json.loads(body[:json_size])
    header["inputs"][0]["shape"] = [1, 50, 50, 4]  # the size fits the body, not the shape
    fixed = _json(header)
    err = _error(fixed + body[json_size:], len(fixed))
    assert (err.status, err.field) == (400, "inputs[0].parameters.binary_data_size")
    assert "needs 10000 x 1 = 10000" in err.message


def test_binary_bytes_elements_must_be_exactly_the_shape():
    def request(raw: bytes, count: int) -> tuple[bytes, int]:
        header = _json({"inputs": [{"name": "b", "datatype": "BYTES", "shape": [count],
                                    "parameters": {"binary_data_size": len(raw)}}]})
        return header + raw, len(header)

    two = struct.pack("<I", 2) + b"ab" + struct.pack("<I", 0)
    assert parse_infer_request(*request(two, 2)).inputs[0].data == [b"ab", b""]
    for raw, count in ((two, 3), (two, 1), (two[:-1], 2), (struct.pack("<I", 99) + b"ab", 1)):
        err = _error(*request(raw, count))
        assert (err.status, err.field) == (400, "inputs[0].data")


def test_too_many_elements_is_413():
    header = {"inputs": [{"name": "x", "datatype": "UINT8", "shape": [64, 512, 512, 3, 2],
                          "data": []}]}
    err = _error(_json(header))
    assert (err.status, err.field) == (413, "inputs[0].shape")
    err = _error(_one(), max_elements=1)
    assert err.status == 413 and "at most 1" in err.expected


def test_empty_and_boolean_tensors():
    header = {"inputs": [{"name": "e", "datatype": "FP32", "shape": [0, 3], "data": []},
                         {"name": "b", "datatype": "BOOL", "shape": [2], "data": [True, False]}]}
    e, b = parse_infer_request(_json(header), None).inputs
    assert e.data.shape == (0, 3) and b.data.tolist() == [True, False]
    raw = bytes([1, 0, 2])  # binary BOOL is one byte each, 0 or 1
    binary = _json({"inputs": [{"name": "b", "datatype": "BOOL", "shape": [3],
                                "parameters": {"binary_data_size": 3}}]})
    err = _error(binary + raw, len(binary))
    assert (err.status, err.field) == (400, "inputs[0].data")
    ok = parse_infer_request(binary + raw[:2] + b"\1", len(binary))
    assert ok.inputs[0].data.tolist() == [True, False, True]
