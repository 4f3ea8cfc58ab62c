"""KServe v2 / Open Inference Protocol over HTTP/REST: request parsing and response encoding,
with the binary tensor data extension, as ``tritonclient.http`` speaks it.

A body is a JSON header, optionally followed by raw tensor bytes. Then the
``Inference-Header-Content-Length`` HTTP header gives the JSON's length, and each binary
tensor's ``parameters.binary_data_size`` its share of the rest, in tensor order. Binary
numbers are little-endian; BYTES elements are a 4-byte little-endian length followed by the
bytes (in JSON they are strings). Anything a client can get wrong is an :class:`InputError`
naming the field; a server-side mistake in :func:`encode_infer_response` is a ValueError.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field

import numpy as np

from patchray.serving.inputs import InputError

HEADER_LENGTH = "Inference-Header-Content-Length"
DEFAULT_MAX_ELEMENTS = 64 * 512 * 512 * 3  # 64 RGB patches of 512x512: ~50 MB of UINT8
# Wire dtypes: explicit little-endian, whatever the host. BYTES has no fixed-width dtype.
DATATYPES: dict[str, np.dtype | None] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"), "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
    "BYTES": None,
}
_DATATYPES_EXPECTED = "one of " + ", ".join(DATATYPES)
_UNSUPPORTED_PARAMETERS = ("shared_memory_region", "classification")


@dataclass
class Tensor:
    """One input or output. ``data`` is an array of ``shape`` (a read-only view of the
    request body for binary inputs), or for BYTES the flat row-major list of elements."""

    name: str
    datatype: str
    shape: list[int]
    data: np.ndarray | list[bytes]
    parameters: dict = field(default_factory=dict)


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None  # the output's parameters.binary_data; None: not said


@dataclass
class InferRequest:
    id: str | None
    inputs: list[Tensor]
    outputs: list[RequestedOutput]
    binary_output_default: bool  # the request's parameters.binary_data_output
    parameters: dict


def parse_infer_request(body: bytes, header_length: int | None, *,
                        max_elements: int = DEFAULT_MAX_ELEMENTS) -> InferRequest:
    """An infer request body -> :class:`InferRequest`. ``header_length`` is the
    Inference-Header-Content-Length header (None: the whole body is JSON). Refuses, with 413,
    requests whose tensors hold more than ``max_elements`` elements in total."""
    split = _header_length(header_length, len(body))
    view = memoryview(body)
    header = _load_json(view if split is None else view[:split], has_length=split is not None)
    raw = None if split is None else view[split:]
    if not isinstance(header, dict):
        raise InputError(400, "body: the inference header must be a JSON object",
                         field="body", expected='{"inputs": [...]}')
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise InputError(400, "id: must be a string", field="id", expected="a string")
    parameters = _parameters(header.get("parameters"), "parameters")
    binary_default = parameters.get("binary_data_output", False)
    if not isinstance(binary_default, bool):
        raise InputError(400, "parameters.binary_data_output: must be true or false",
                         field="parameters.binary_data_output", expected="a boolean")
    inputs = _inputs(header.get("inputs"), raw, max_elements)
    return InferRequest(id=request_id, inputs=inputs, outputs=_outputs(header.get("outputs")),
                        binary_output_default=binary_default, parameters=parameters)


def wants_binary(request: InferRequest, output_name: str) -> bool:
    """Whether ``output_name`` goes back as binary data: the output's own
    ``parameters.binary_data``, else the request's ``binary_data_output``, else JSON."""
    for output in request.outputs:
        if output.name == output_name and output.binary is not None:
            return output.binary
    return request.binary_output_default


def encode_infer_response(*, model_name: str, model_version: str, request_id: str | None,
                          outputs: list[Tensor], binary: bool | set[str],
                          parameters: dict | None = None) -> tuple[bytes, dict[str, str]]:
    """Outputs -> (body, headers). ``binary``: every output, or the names of those sent as
    raw bytes after the JSON (the rest go as flat JSON lists)."""
    specs, chunks, any_binary = [], [], False
    for tensor in outputs:
        as_binary = binary if isinstance(binary, bool) else tensor.name in binary
        spec = {"name": tensor.name, "datatype": tensor.datatype,
                "shape": [int(d) for d in tensor.shape]}
        params = dict(tensor.parameters)
        if as_binary:
            chunk = _to_bytes(tensor)
            params["binary_data_size"] = len(chunk)
            chunks.append(chunk)
            any_binary = True
        else:
            spec["data"] = _to_json(tensor)
        if params:
            spec["parameters"] = params
        specs.append(spec)
    response: dict = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        response["id"] = request_id
    if parameters:
        response["parameters"] = parameters
    response["outputs"] = specs
    # ensure_ascii (the default) keeps len(str) == len(bytes), which tritonclient assumes.
    header = json.dumps(response, separators=(",", ":"), allow_nan=False).encode()
    if not any_binary:
        return header, {"Content-Type": "application/json"}
    return header + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                       HEADER_LENGTH: str(len(header))}


def server_metadata(name: str, version: str) -> dict:
    return {"name": name, "version": version, "extensions": ["binary_tensor_data"]}


def model_metadata(name: str, versions: list[str], platform: str, inputs: list[dict],
                   outputs: list[dict]) -> dict:
    """The v2 model metadata: ``inputs``/``outputs`` are {"name", "datatype", "shape"}
    dicts (-1 for a variable dimension)."""
    return {"name": name, "versions": list(versions), "platform": platform,
            "inputs": list(inputs), "outputs": list(outputs)}


def error_body(message: str) -> dict:
    return {"error": message}


# -- request parsing ----------------------------------------------------------------------


def _header_length(value: int | str | None, body_length: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, str) and value.isascii() and value.strip().isdigit():
        value = int(value)  # straight from the HTTP header
    if type(value) is not int or not 0 <= value <= body_length:
        raise InputError(400, f"{HEADER_LENGTH}: {value!r} is not an integer from 0 to the "
                         f"body's {body_length} bytes", field=HEADER_LENGTH,
                         expected=f"an integer from 0 to {body_length}")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def _load_json(data: memoryview, *, has_length: bool) -> object:
    try:
        return json.loads(bytes(data), parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError too
        reason = str(e)[:160] or type(e).__name__
        hint = "" if has_length else (
            f"; binary tensor data needs the {HEADER_LENGTH} header")
        raise InputError(400, f"body: malformed JSON inference header ({reason}){hint}",
                         field="body", expected="a JSON object") from None


def _parameters(value: object, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InputError(400, f"{where}: must be a JSON object", field=where,
                         expected="an object")
    return dict(value)


def _inputs(specs: object, raw: memoryview | None, max_elements: int) -> list[Tensor]:
    if not isinstance(specs, list) or not specs:
        raise InputError(400, "inputs: missing, or not a non-empty list of tensors",
                         field="inputs", expected="a non-empty list of input tensors")
    tensors, offset, total = [], 0, 0
    for i, spec in enumerate(specs):
        where = f"inputs[{i}]"
        name, datatype, shape, params = _tensor_header(spec, where)
        count = math.prod(shape)
        total += count
        if total > max_elements:
            raise InputError(413, f"{where}.shape: {shape} brings the request to {total} "
                             f"elements; at most {max_elements} are accepted",
                             field=f"{where}.shape", expected=f"at most {max_elements} elements")
        size = params.pop("binary_data_size", None)
        if size is None:
            data = _json_data(spec, datatype, shape, count, where)
        else:
            chunk = _binary_chunk(spec, size, raw, offset, where)
            data = _binary_data(chunk, datatype, shape, count, where)
            offset += len(chunk)
        tensors.append(Tensor(name, datatype, shape, data, params))
    if raw is not None and offset != len(raw):
        raise InputError(400, f"body: {len(raw)} bytes follow the JSON header but the inputs' "
                         f"binary_data_size add up to {offset}", field="body",
                         expected="binary_data_size values adding up to the bytes after the "
                         f"{HEADER_LENGTH} bytes of JSON")
    _refuse_duplicates([t.name for t in tensors], "inputs")
    return tensors


def _tensor_header(spec: object, where: str) -> tuple[str, str, list[int], dict]:
    if not isinstance(spec, dict):
        raise InputError(400, f"{where}: must be a JSON object", field=where,
                         expected="an object with name, datatype, shape and data")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise InputError(400, f"{where}.name: missing or not a non-empty string",
                         field=f"{where}.name", expected="a non-empty string")
    datatype = spec.get("datatype")
    if datatype not in DATATYPES:
        raise InputError(400, f"{where}.datatype: {datatype!r} is not a supported datatype",
                         field=f"{where}.datatype", expected=_DATATYPES_EXPECTED)
    shape = spec.get("shape")
    if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
        raise InputError(400, f"{where}.shape: must be a list of non-negative integers",
                         field=f"{where}.shape", expected="a list of non-negative integers")
    params = _parameters(spec.get("parameters"), f"{where}.parameters")
    _refuse_unsupported(params, f"{where}.parameters")
    return name, datatype, shape, params


def _outputs(specs: object) -> list[RequestedOutput]:
    if specs is None:
        return []
    if not isinstance(specs, list):
        raise InputError(400, "outputs: must be a list", field="outputs",
                         expected='a list of {"name": ..., "parameters": {...}}')
    outputs = []
    for j, spec in enumerate(specs):
        where = f"outputs[{j}]"
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(400, f"{where}.name: missing or not a non-empty string",
                             field=f"{where}.name", expected="a non-empty string")
        params = _parameters(spec.get("parameters"), f"{where}.parameters")
        _refuse_unsupported(params, f"{where}.parameters")
        binary = params.get("binary_data")
        if binary is not None and not isinstance(binary, bool):
            raise InputError(400, f"{where}.parameters.binary_data: must be true or false",
                             field=f"{where}.parameters.binary_data", expected="a boolean")
        outputs.append(RequestedOutput(name, binary))
    _refuse_duplicates([o.name for o in outputs], "outputs")
    return outputs


def _refuse_unsupported(params: dict, where: str) -> None:
    for key in _UNSUPPORTED_PARAMETERS:
        if key in params:
            raise InputError(400, f"{where}.{key}: not supported by this server",
                             field=f"{where}.{key}", expected="tensor data in the request body")


def _refuse_duplicates(names: list[str], where: str) -> None:
    seen = set()
    for i, name in enumerate(names):
        if name in seen:
            raise InputError(400, f"{where}[{i}].name: {name!r} appears twice",
                             field=f"{where}[{i}].name", expected="unique tensor names")
        seen.add(name)


def _json_data(spec: dict, datatype: str, shape: list[int], count: int,
               where: str) -> np.ndarray | list[bytes]:
    if "data" not in spec:
        raise InputError(400, f"{where}.data: missing", field=f"{where}.data",
                         expected="data, or parameters.binary_data_size with binary data")
    flat = _flatten(spec["data"], shape, f"{where}.data")
    if len(flat) != count:
        raise InputError(400, f"{where}.data: {len(flat)} elements; expected {count} (the "
                         f"product of shape {shape})", field=f"{where}.data",
                         expected=f"{count} elements")
    return _from_json(flat, datatype, shape, f"{where}.data")


def _flatten(data: object, shape: list[int], where: str) -> list:
    """A flat list, or lists nested exactly as ``shape`` -> the flat row-major list."""
    if not isinstance(data, list):
        raise InputError(400, f"{where}: must be a list", field=where,
                         expected="a flat list, or lists nested as the shape")
    if not any(isinstance(v, list) for v in data):
        return data
    level: list = [data]
    for n in shape:  # iterative: nesting depth is the client's to choose
        if not all(isinstance(v, list) and len(v) == n for v in level):
            raise InputError(400, f"{where}: nested lists do not match shape {shape}",
                             field=where, expected=f"a flat list, or lists nested as {shape}")
        level = [x for v in level for x in v]
    if any(isinstance(v, list) for v in level):
        raise InputError(400, f"{where}: nested deeper than shape {shape}", field=where,
                         expected=f"a flat list, or lists nested as {shape}")
    return level


def _from_json(flat: list, datatype: str, shape: list[int], where: str) -> np.ndarray | list[bytes]:
    if datatype == "BYTES":
        return _json_bytes(flat, where)
    dtype = DATATYPES[datatype]
    if dtype.kind == "b":
        ok, expected = all(type(v) is bool for v in flat), "true/false values"
    elif dtype.kind in "iu":
        info = np.iinfo(dtype)
        ok = all(type(v) is int for v in flat) and (
            not flat or (info.min <= min(flat) and max(flat) <= info.max))
        expected = f"integers from {info.min} to {info.max} ({datatype})"
    else:
        ok, expected = all(type(v) in (int, float) for v in flat), f"finite numbers ({datatype})"
    if ok:
        try:
            with np.errstate(over="ignore"):
                array = np.array(flat, dtype=dtype).reshape(shape)
        except (OverflowError, ValueError):
            ok = False
        else:
            ok = dtype.kind != "f" or bool(np.isfinite(array).all())
    if not ok:
        raise InputError(400, f"{where}: elements must be {expected}", field=where,
                         expected=expected)
    return array


def _json_bytes(flat: list, where: str) -> list[bytes]:
    expected = "strings (send raw bytes as binary data, or as base64 text)"
    if not all(type(v) is str for v in flat):
        raise InputError(400, f"{where}: BYTES elements in JSON must be strings", field=where,
                         expected=expected)
    try:
        return [v.encode("utf-8") for v in flat]
    except UnicodeEncodeError:  # lone surrogates from \\ud800 escapes
        raise InputError(400, f"{where}: a string is not valid Unicode", field=where,
                         expected=expected) from None


def _binary_chunk(spec: dict, size: object, raw: memoryview | None, offset: int,
                  where: str) -> memoryview:
    field_name = f"{where}.parameters.binary_data_size"
    if raw is None:
        raise InputError(400, f"{field_name}: binary data needs the {HEADER_LENGTH} header",
                         field=field_name,
                         expected=f"JSON data, or the {HEADER_LENGTH} header with binary data")
    if "data" in spec:
        raise InputError(400, f"{where}: has both data and binary_data_size", field=where,
                         expected="either data or parameters.binary_data_size")
    if type(size) is not int or size < 0:
        raise InputError(400, f"{field_name}: must be a non-negative integer",
                         field=field_name, expected="a non-negative integer")
    if offset + size > len(raw):
        raise InputError(400, f"{field_name}: {size} bytes claimed but only {len(raw) - offset} "
                         "remain in the body", field=field_name,
                         expected=f"at most {len(raw) - offset}")
    return raw[offset:offset + size]


def _binary_data(chunk: memoryview, datatype: str, shape: list[int], count: int,
                 where: str) -> np.ndarray | list[bytes]:
    if datatype == "BYTES":
        return _split_bytes(chunk, count, where)
    dtype = DATATYPES[datatype]
    if len(chunk) != count * dtype.itemsize:
        field_name = f"{where}.parameters.binary_data_size"
        raise InputError(400, f"{field_name}: {len(chunk)} bytes; shape {shape} of {datatype} "
                         f"needs {count} x {dtype.itemsize} = {count * dtype.itemsize}",
                         field=field_name, expected=f"{count * dtype.itemsize} bytes")
    # numpy would read any byte as a bool; the protocol says 0 or 1
    if dtype.kind == "b" and len(chunk) and np.frombuffer(chunk, np.uint8).max() > 1:
        raise InputError(400, f"{where}.data: BOOL bytes must be 0 or 1", field=f"{where}.data",
                         expected="bytes 0 or 1")
    return np.frombuffer(chunk, dtype=dtype).reshape(shape)


def _split_bytes(chunk: memoryview, count: int, where: str) -> list[bytes]:
    """4-byte little-endian length-prefixed elements -> exactly ``count`` bytes objects."""
    field_name = f"{where}.data"
    items, pos, end = [], 0, len(chunk)
    while pos < end:
        if len(items) == count or pos + 4 > end:
            break
        (length,) = struct.unpack_from("<I", chunk, pos)
        if pos + 4 + length > end:
            raise InputError(400, f"{field_name}: BYTES element {len(items)} claims {length} "
                             f"bytes but only {end - pos - 4} remain", field=field_name,
                             expected="4-byte little-endian lengths, each followed by its bytes")
        items.append(bytes(chunk[pos + 4:pos + 4 + length]))
        pos += 4 + length
    if len(items) != count or pos != end:
        raise InputError(400, f"{field_name}: binary data holds {len(items)} BYTES elements "
                         f"and {end - pos} stray bytes; expected exactly {count} elements",
                         field=field_name, expected=f"{count} length-prefixed elements")
    return items


# -- response encoding --------------------------------------------------------------------


def _output_array(tensor: Tensor) -> np.ndarray:
    dtype = DATATYPES.get(tensor.datatype)
    if dtype is None:
        raise ValueError(f"output {tensor.name!r}: datatype {tensor.datatype!r} is not "
                         f"{_DATATYPES_EXPECTED} (BYTES data is a list of bytes)")
    array = np.asarray(tensor.data)
    if array.size != math.prod(tensor.shape):
        raise ValueError(f"output {tensor.name!r}: {array.size} elements for shape "
                         f"{list(tensor.shape)}")
    return array.astype(dtype, copy=False).reshape(-1)


def _output_bytes(tensor: Tensor) -> list[bytes]:
    items = [v if isinstance(v, bytes) else bytes(v) for v in tensor.data]
    if len(items) != math.prod(tensor.shape):
        raise ValueError(f"output {tensor.name!r}: {len(items)} BYTES elements for shape "
                         f"{list(tensor.shape)}")
    return items


def _to_bytes(tensor: Tensor) -> bytes:
    if tensor.datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in _output_bytes(tensor))
    return _output_array(tensor).tobytes()


def _to_json(tensor: Tensor) -> list:
    if tensor.datatype == "BYTES":  # raises UnicodeDecodeError: such outputs must go binary
        return [v.decode("utf-8") for v in _output_bytes(tensor)]
    return _output_array(tensor).tolist()  # Python ints/floats/bools
