"""The ingress deployment: HTTP, API keys, input hygiene, batching, answers, audit.

Routes (``docs/openapi`` is generated from these; ``serve/openapi.json`` is the committed copy):

  POST /v1/classify        PNG or JPEG body, multipart patches, or JSON base64 ``instances``
  POST /v1/predict         the skeleton's single-patch route, kept: same code, flat answer
  GET  /v1/model           the served version's model card
  GET  /v2 ...             KServe's Open Inference Protocol (REST, binary tensor extension)
  GET  /healthz, /v2/health/live, /v2/health/ready   open; everything else needs a key

Decoding happens here, per request, so a bad image fails only its own request; the decoded
patches of concurrent single-patch requests are batched into one classifier call. Nothing a
client sends (paths, headers, query strings, file names) is logged or becomes a metric label;
the audit record holds only hashes of the inputs.
"""


import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from ray import serve
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser

from patchray import __version__
from patchray.config import ServeAppArgs
from patchray.inference.preprocess import Preprocess
from patchray.serving import protocol_v2 as v2
from patchray.serving.answers import ModelInfo, predictions, review_band, tta_mean, tta_views
from patchray.serving.audit import AuditLog, default_audit_dir, writer_id_for
from patchray.serving.classifier import LocalClassifier, ModelHolder, RemoteClassifier
from patchray.serving.inputs import InputError, check_pixel_tensor, decode_patch, strict_b64decode
from patchray.serving.keys import KeyCache, default_keys_uri
from patchray.serving.metrics import IngressMetrics

log = logging.getLogger("ray.serve")
DEFAULTS = ServeAppArgs()
SINGLE_TYPES = ("image/png", "image/jpeg", "application/octet-stream")
INFO_TTL_S = 1.0  # how stale /v1/model and /v2 metadata may be after a swap


# ----------------------------------------------------------------------------- contract

class Instance(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image_b64: str = Field(description="One PNG or JPEG patch, standard base64 with padding")


class ClassifyJSON(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Instance] = Field(min_length=1)
    tta: bool | None = Field(None, description="Mean over the 8 rotations and flips")


class ModelRefOut(BaseModel):
    name: str
    version: str
    precision: str
    sha256: str
    calibration: str = Field("none", description="calibration the probabilities went "
                             "through (fitted on validation); none: the raw model output")


class PatchAnswer(BaseModel):
    probability: float
    label: int
    label_name: str
    needs_review: bool


class ClassifyAnswer(BaseModel):
    request_id: str
    model: ModelRefOut
    threshold: float
    review_band: tuple[float, float]
    tta: bool
    predictions: list[PatchAnswer]


class ErrorAnswer(BaseModel):
    error: str
    field: str | None = None
    expected: str | None = None
    request_id: str | None = None


_ERRORS = {code: {"model": ErrorAnswer, "description": text} for code, text in {
    400: "Malformed input (bad base64, JSON or image bytes)",
    401: "No valid API key (Authorization: Bearer <key>)", 403: "The key was revoked",
    404: "Unknown model or version", 408: "Request timeout",
    413: "Body, patch count or pixel count over the cap", 415: "Not PNG, JPEG, multipart or JSON",
    422: "Wrong patch size, channels or bit depth (the field and what was expected are named)",
    503: "Overloaded (Retry-After) or not ready"}.items()}

_IMAGE_BODY = {"schema": {"type": "string", "format": "binary"}}
_CLASSIFY_BODY = {"requestBody": {"required": True, "content": {
    "image/png": _IMAGE_BODY, "image/jpeg": _IMAGE_BODY,
    "multipart/form-data": {"schema": {"type": "object", "properties": {"files": {
        "type": "array", "items": {"type": "string", "format": "binary"}}}}},
    "application/json": {"schema": ClassifyJSON.model_json_schema(
        ref_template="#/components/schemas/{model}")},
}}}
_V2_INFER_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"type": "object", "required": ["inputs"], "properties": {
        "id": {"type": "string"},
        "inputs": {"type": "array", "items": {"type": "object", "required": [
            "name", "datatype", "shape", "data"], "properties": {
            "name": {"type": "string"}, "datatype": {"type": "string"},
            "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
            "data": {"type": "array"}}}},
        "outputs": {"type": "array", "items": {"type": "object", "properties": {
            "name": {"type": "string"}}}}}}}}}}

api = FastAPI(title="patchray patch classifier", version=__version__,
              docs_url=None, redoc_url=None, openapi_url=None,  # /openapi.json needs a key
              description="Histopathology patch classification: a native API (/v1) and "
              "KServe's Open Inference Protocol (/v2). Send `Authorization: Bearer <key>`.")


def openapi_document() -> dict[str, Any]:
    """The native API's OpenAPI description (committed as serve/openapi.json)."""
    doc = api.openapi()
    doc.setdefault("components", {})["securitySchemes"] = {
        "bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    for path in ("/healthz", "/v2/health/live", "/v2/health/ready"):
        doc["paths"][path]["get"]["security"] = []
    return doc


def _error(status: int, message: str, *, request_id: str | None = None,
           headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"error": message, **{k: v for k, v in extra.items() if v is not None}}
    if request_id:
        body["request_id"] = request_id
    return JSONResponse(status_code=status, content=body, headers=headers)


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and methods: JSON with "error" (KServe clients read it), no echo of
    # the path a client sent.
    return _error(exc.status_code, "no such route" if exc.status_code == 404 else
                  str(exc.detail), headers=getattr(exc, "headers", None))


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()))
    return _error(422, f"{where}: {first.get('msg', 'invalid')}", field=where)


# ----------------------------------------------------------------------------- plumbing

@dataclass
class Call:
    """What one request did, for its answer, metrics and audit record."""

    route: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    client: str | None = None
    key_id: str | None = None
    info: ModelInfo | None = None
    inputs: list[str] = field(default_factory=list)  # sha256 of each patch as sent


def _patch_count(items: list[np.ndarray]) -> int:
    return sum(len(x) for x in items)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def read_body(request: Request, cap: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed ``cap``: from
    Content-Length before reading anything, else while streaming a chunked body."""
    length = request.headers.get("content-length")
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            raise InputError(400, "Content-Length is not a number", field="Content-Length")
        if int(length) > cap:
            raise InputError(413, f"body of {length} bytes is over the cap", field="body",
                             expected=f"at most {cap} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > cap:
            raise InputError(413, "body is over the cap", field="body",
                             expected=f"at most {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def _flag(request: Request, name: str) -> bool | None:
    value = request.query_params.get(name)
    if value is None:
        return None
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise InputError(422, f"query parameter {name} must be true or false", field=name,
                     expected="true or false")


async def _one(body: bytes) -> bytes:  # MultiPartParser reads from an async stream
    yield body


# ----------------------------------------------------------------------------- deployment

@serve.deployment(name="Ingress")
@serve.ingress(api)
class Ingress:
    def __init__(self, classifier: Any, args: dict[str, Any]):
        """``classifier``: the Classifier deployment's handle (``topology: split``), or None
        to hold the model here (``fused``)."""
        self.args = ServeAppArgs.model_validate(args)
        self.core = ModelHolder(self.args) if classifier is None else None
        self.classifier = (LocalClassifier(self.core) if self.core is not None
                           else RemoteClassifier(classifier))
        self.metrics = IngressMetrics()
        self.keys = (KeyCache(self.args.keys or default_keys_uri(),
                              refresh_s=self.args.keys_refresh_s)
                     if self.args.auth == "api_key" else None)
        import ray

        writer = writer_id_for(ray.get_runtime_context().get_node_id(),
                               serve.get_replica_context().replica_id.unique_id)
        self.audit = AuditLog(self.args.audit_dir or default_audit_dir(), writer)
        self._batched.set_max_batch_size(self.args.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.args.batch_wait_timeout_s)
        self._info: ModelInfo | None = None
        self._info_at = 0.0

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        if self.core is not None:  # fused: user_config.model is this replica's to follow
            self.core.reconfigure(user_config)

    def check_health(self) -> None:
        if self.core is not None:
            self.core.check_health()

    def __del__(self) -> None:
        core = getattr(self, "core", None)
        if core is not None:
            core.stop()

    # -- the model, as the classifier reports it ----------------------------------------

    async def model(self) -> ModelInfo:
        if self._info is None or time.monotonic() - self._info_at > INFO_TTL_S:
            self._info = ModelInfo.from_dict(await self.classifier.info())
            self._info_at = time.monotonic()
        return self._info

    async def _preprocess(self) -> Preprocess:
        return Preprocess.model_validate((await self.model()).input)

    @serve.batch(max_batch_size=DEFAULTS.max_batch_size,
                 batch_wait_timeout_s=DEFAULTS.batch_wait_timeout_s,
                 max_concurrent_batches=DEFAULTS.max_concurrent_batches,
                 batch_size_fn=_patch_count)
    async def _batched(self, items: list[np.ndarray]) -> list[tuple[np.ndarray, dict]]:
        probabilities, info = await self.classifier.score(np.concatenate(items))
        out, start = [], 0
        for x in items:
            out.append((probabilities[start:start + len(x)], info))
            start += len(x)
        return out

    async def score(self, pixels: np.ndarray, tta: bool) -> tuple[np.ndarray, ModelInfo]:
        """Probabilities of ``(N, S, S, 3)`` patches and the version that gave them.
        Small requests share batches; one as large as a batch goes on its own."""
        batch = tta_views(pixels) if tta else pixels
        if len(batch) <= self.args.max_batch_size:
            probabilities, info = await self._batched(batch)
        else:
            probabilities, info = await self.classifier.score(batch)
        if tta:
            probabilities = tta_mean(probabilities, len(pixels))
        return probabilities, ModelInfo.from_dict(info)

    # -- one request, whatever the route: auth, errors, metrics, audit ------------------

    async def handle(self, request: Request, call: Call,
                     work: Callable[[], Awaitable[Response]], *, open_route: bool = False
                     ) -> Response:
        start = time.perf_counter()
        status, outcome = 500, "error"
        try:
            if not open_route:
                denied = self._authenticate(request, call)
                if denied is not None:
                    status, outcome = denied.status_code, "unauthorised"
                    return denied
            response = await work()
            status, outcome = response.status_code, "ok" if response.status_code < 400 else "refused"
            return response
        except InputError as e:
            status, outcome = e.status, "refused"
            self.metrics.rejected.inc(tags={"reason": str(e.status)})
            return _error(e.status, e.message, field=e.field, expected=e.expected,
                          request_id=call.request_id)
        except Exception as e:  # never a stack trace to the client; the replica goes on
            log.error("request %s on %s failed: %s", call.request_id, call.route,
                      type(e).__name__)
            return _error(500, "internal error", request_id=call.request_id)
        finally:
            elapsed = time.perf_counter() - start
            self.metrics.answered(call.route, status, elapsed)
            if not open_route:
                self._audit(call, status, outcome, elapsed)

    def _authenticate(self, request: Request, call: Call) -> JSONResponse | None:
        if self.keys is None:
            call.client = "anonymous"
            return None
        result = self.keys.check(request.headers.get("authorization"))
        if result.status == 200:
            call.client, call.key_id = result.client, result.key_id
            return None
        headers = {"WWW-Authenticate": "Bearer"} if result.status == 401 else None
        return _error(result.status, result.reason, headers=headers, request_id=call.request_id)

    def _audit(self, call: Call, status: int, outcome: str, elapsed: float) -> None:
        info = call.info
        try:
            self.audit.record(
                request_id=call.request_id, client=call.client, key_id=call.key_id,
                route=call.route, status=status, outcome=outcome,
                model=info.name if info else None, model_version=info.version if info else None,
                model_sha256=(info.sha256 or None) if info else None, input_sha256=call.inputs,
                n_patches=len(call.inputs), latency_ms=round(elapsed * 1000.0, 3))
        except Exception as e:  # an unwritable audit volume must page, not crash requests
            self.metrics.rejected.inc(tags={"reason": "audit_write_failed"})
            log.error("audit write failed: %s", type(e).__name__)

    # -- native API ----------------------------------------------------------------------

    async def _patches(self, request: Request, call: Call) -> tuple[np.ndarray, bool | None]:
        """The request's patches, decoded and checked; and the JSON body's ``tta``."""
        media = _media_type(request)
        if media not in (*SINGLE_TYPES, "multipart/form-data", "application/json"):
            raise InputError(415, f"Content-Type {media or '(none)'} not accepted",
                             field="Content-Type", expected="image/png, image/jpeg, "
                             "multipart/form-data or application/json")
        body = await read_body(request, self.args.max_body_bytes)
        if media == "multipart/form-data":
            images = await self._multipart(request, body)
            tta = None
        elif media == "application/json":
            images, tta = self._json_images(body)
        else:
            images, tta = [("body", body)], None
        if len(images) > self.args.max_patches_per_request:
            raise InputError(413, f"{len(images)} patches in one request", field="patches",
                             expected=f"at most {self.args.max_patches_per_request}")
        preprocess = await self._preprocess()
        call.inputs = [_sha256(data) for _, data in images]
        return np.stack([decode_patch(data, preprocess, field=where)
                         for where, data in images]), tta

    async def _multipart(self, request: Request, body: bytes) -> list[tuple[str, bytes]]:
        parser = MultiPartParser(Headers(scope=request.scope), _one(body),
                                 max_files=self.args.max_patches_per_request, max_fields=0)
        try:
            form = await parser.parse()
        except MultiPartException as e:
            raise InputError(400, f"malformed multipart body: {e.message}", field="body",
                             expected="multipart/form-data with one file part per patch"
                             ) from None
        files = [v for _, v in form.multi_items() if not isinstance(v, str)]
        if not files:
            raise InputError(400, "no file parts", field="body",
                             expected="multipart/form-data with one file part per patch")
        # Part names and file names are never used or logged: they can carry identifiers.
        return [(f"files[{i}]", await f.read()) for i, f in enumerate(files)]

    @staticmethod
    def _json_images(body: bytes) -> tuple[list[tuple[str, bytes]], bool | None]:
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError) as e:
            raise InputError(400, f"malformed JSON ({e.__class__.__name__})", field="body",
                             expected='{"instances": [{"image_b64": "..."}]}') from None
        try:
            parsed = ClassifyJSON.model_validate(data)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            raise InputError(422, f"{where}: {first['msg']}", field=where,
                             expected='{"instances": [{"image_b64": "..."}], "tta": false}'
                             ) from None
        return [(f"instances[{i}].image_b64",
                 strict_b64decode(x.image_b64, field=f"instances[{i}].image_b64"))
                for i, x in enumerate(parsed.instances)], parsed.tta

    async def _classify(self, request: Request, call: Call) -> dict[str, Any]:
        query_tta = _flag(request, "tta")
        pixels, body_tta = await self._patches(request, call)
        tta = next(t for t in (query_tta, body_tta, self.args.tta) if t is not None)
        probabilities, info = await self.score(pixels, tta)
        call.info = info
        answers = predictions(probabilities, info, self.args.review_margin)
        self.metrics.scored(info, answers)
        return {"request_id": call.request_id, "model": info.public(),
                "threshold": info.threshold,
                "review_band": review_band(info.threshold, self.args.review_margin),
                "tta": tta, "predictions": answers}

    @api.post("/v1/classify", response_model=ClassifyAnswer, responses=_ERRORS,
              openapi_extra=_CLASSIFY_BODY, summary="Classify one or more patches")
    async def classify(self, request: Request) -> Response:
        call = Call("/v1/classify")

        async def work() -> Response:
            return JSONResponse(await self._classify(request, call))
        return await self.handle(request, call, work)

    @api.post("/v1/predict", responses=_ERRORS, openapi_extra={"requestBody": {
        "required": True, "content": {"image/png": _IMAGE_BODY, "image/jpeg": _IMAGE_BODY}}},
        summary="Deprecated: one patch, flat answer (use /v1/classify)", deprecated=True)
    async def predict(self, request: Request) -> Response:
        call = Call("/v1/predict")

        async def work() -> Response:
            if _media_type(request) not in SINGLE_TYPES:
                raise InputError(415, f"Content-Type {_media_type(request) or '(none)'} not "
                                 "accepted", field="Content-Type",
                                 expected="image/png or image/jpeg")
            answer = await self._classify(request, call)
            (patch,) = answer["predictions"]
            model = answer["model"]
            return JSONResponse({**patch, "threshold": answer["threshold"],
                                 "model": model["name"], "model_version": model["version"],
                                 "precision": model["precision"], "sha256": model["sha256"],
                                 "calibration": model["calibration"],
                                 "request_id": call.request_id})
        return await self.handle(request, call, work)

    @api.get("/v1/model", responses=_ERRORS, summary="The served version's model card")
    async def model_card(self, request: Request) -> Response:
        call = Call("/v1/model")

        async def work() -> Response:
            return JSONResponse(await self.classifier.card())
        return await self.handle(request, call, work)

    @api.get("/openapi.json", include_in_schema=False)
    async def openapi(self, request: Request) -> Response:
        call = Call("/openapi.json")

        async def work() -> Response:
            return JSONResponse(openapi_document())
        return await self.handle(request, call, work)

    @api.get("/healthz", summary="Liveness and the served version (open)")
    async def healthz(self, request: Request) -> Response:
        call = Call("/healthz")

        async def work() -> Response:
            info = await self.model()
            return JSONResponse({"status": "ok", "model": info.name,
                                 "model_version": info.version, "precision": info.precision})
        return await self.handle(request, call, work, open_route=True)

    # -- Open Inference Protocol (KServe v2) ---------------------------------------------

    @api.get("/v2/health/live", summary="KServe v2 liveness (open)")
    async def v2_live(self, request: Request) -> Response:
        return await self.handle(request, Call("/v2/health/live"),
                                 self._ok_json({"live": True}), open_route=True)

    @api.get("/v2/health/ready", summary="KServe v2 readiness (open)")
    async def v2_ready(self, request: Request) -> Response:
        async def work() -> Response:
            await self.model()  # ready once the classifier answers
            return JSONResponse({"ready": True})
        return await self.handle(request, Call("/v2/health/ready"), work, open_route=True)

    @staticmethod
    def _ok_json(body: dict[str, Any]) -> Callable[[], Awaitable[Response]]:
        async def work() -> Response:
            return JSONResponse(body)
        return work

    @api.get("/v2", responses=_ERRORS, summary="KServe v2 server metadata")
    async def v2_server(self, request: Request) -> Response:
        return await self.handle(request, Call("/v2"), self._ok_json(
            v2.server_metadata("patchray", __version__)))

    async def _v2_model(self, name: str, version: str | None) -> ModelInfo:
        info = await self.model()
        if name != info.name:
            raise InputError(404, "unknown model", field="model_name",
                             expected=f"{info.name} (the model this service serves)")
        if version is not None and version != info.version:
            raise InputError(404, "version not served", field="model_version",
                             expected=f"{info.version} (the version served now)")
        return info

    def _v2_metadata(self, info: ModelInfo) -> dict[str, Any]:
        size = info.size
        return v2.model_metadata(
            info.name, [info.version], "openvino_ir",
            inputs=[{"name": "patches", "datatype": "UINT8", "shape": [-1, size, size, 3]},
                    {"name": "images", "datatype": "BYTES", "shape": [-1]}],
            outputs=[{"name": "probability", "datatype": "FP32", "shape": [-1],
                      "parameters": {"calibration": info.calibration}},
                     {"name": "label", "datatype": "INT32", "shape": [-1]},
                     {"name": "needs_review", "datatype": "BOOL", "shape": [-1]}])

    async def _v2_meta_route(self, request: Request, route: str, name: str,
                             version: str | None, ready: bool) -> Response:
        call = Call(route)

        async def work() -> Response:
            info = await self._v2_model(name, version)
            body = ({"name": info.name, "ready": True} if ready else self._v2_metadata(info))
            return JSONResponse(body)
        return await self.handle(request, call, work)

    @api.get("/v2/models/{name}", responses=_ERRORS, summary="KServe v2 model metadata")
    async def v2_model(self, request: Request, name: str) -> Response:
        return await self._v2_meta_route(request, "/v2/models/{name}", name, None, False)

    @api.get("/v2/models/{name}/versions/{version}", responses=_ERRORS,
             summary="KServe v2 model metadata, one version")
    async def v2_model_version(self, request: Request, name: str, version: str) -> Response:
        return await self._v2_meta_route(request, "/v2/models/{name}/versions/{version}",
                                         name, version, False)

    @api.get("/v2/models/{name}/ready", responses=_ERRORS, summary="KServe v2 model readiness")
    async def v2_model_ready(self, request: Request, name: str) -> Response:
        return await self._v2_meta_route(request, "/v2/models/{name}/ready", name, None, True)

    @api.get("/v2/models/{name}/versions/{version}/ready", responses=_ERRORS,
             summary="KServe v2 model readiness, one version")
    async def v2_model_version_ready(self, request: Request, name: str,
                                     version: str) -> Response:
        return await self._v2_meta_route(
            request, "/v2/models/{name}/versions/{version}/ready", name, version, True)

    async def _v2_infer(self, request: Request, call: Call, name: str,
                        version: str | None) -> Response:
        await self._v2_model(name, version)
        body = await read_body(request, self.args.max_body_bytes)
        # Checked by the codec: a non-number or out-of-range length is a 400 there.
        req = v2.parse_infer_request(body, request.headers.get("inference-header-content-length"))
        if len(req.inputs) != 1 or req.inputs[0].name not in ("patches", "images"):
            raise InputError(400, "expected exactly one input", field="inputs",
                             expected='one input named "patches" (UINT8 [N,H,W,3]) or '
                             '"images" (BYTES, PNG/JPEG)')
        tensor = req.inputs[0]
        preprocess = await self._preprocess()
        if tensor.name == "patches":
            if tensor.datatype != "UINT8":
                raise InputError(422, f"datatype {tensor.datatype}", field="inputs[0].datatype",
                                 expected="UINT8")
            array = np.asarray(tensor.data)
            if array.ndim == 4 and array.shape[0] > self.args.max_patches_per_request:
                raise InputError(413, f"{array.shape[0]} patches in one request",
                                 field="inputs[0].shape",
                                 expected=f"at most {self.args.max_patches_per_request}")
            pixels = check_pixel_tensor(array, preprocess, field="inputs[0]")
            call.inputs = [_sha256(p.tobytes()) for p in array]
        else:
            if tensor.datatype != "BYTES":
                raise InputError(422, f"datatype {tensor.datatype}", field="inputs[0].datatype",
                                 expected="BYTES")
            images = list(tensor.data)
            if len(images) > self.args.max_patches_per_request:
                raise InputError(413, f"{len(images)} patches in one request",
                                 field="inputs[0].shape",
                                 expected=f"at most {self.args.max_patches_per_request}")
            if not images:
                raise InputError(400, "no images", field="inputs[0].data",
                                 expected="at least one PNG or JPEG")
            call.inputs = [_sha256(b) for b in images]
            pixels = np.stack([decode_patch(b, preprocess, field=f"inputs[0].data[{i}]")
                               for i, b in enumerate(images)])
        tta = bool(req.parameters.get("tta", self.args.tta))
        probabilities, info = await self.score(pixels, tta)
        call.info = info
        answers = predictions(probabilities, info, self.args.review_margin)
        self.metrics.scored(info, answers)
        outputs = {
            "probability": v2.Tensor("probability", "FP32", [len(answers)],
                                     np.asarray(probabilities, dtype=np.float32)),
            "label": v2.Tensor("label", "INT32", [len(answers)],
                               np.asarray([a["label"] for a in answers], dtype=np.int32)),
            "needs_review": v2.Tensor("needs_review", "BOOL", [len(answers)],
                                      np.asarray([a["needs_review"] for a in answers])),
        }
        wanted = [o.name for o in req.outputs] or list(outputs)
        unknown = [w for w in wanted if w not in outputs]
        if unknown:
            raise InputError(400, f"unknown output {unknown[0]}", field="outputs",
                             expected=", ".join(outputs))
        binary = {w for w in wanted if v2.wants_binary(req, w)}
        content, headers = v2.encode_infer_response(
            model_name=info.name, model_version=info.version, request_id=req.id,
            outputs=[outputs[w] for w in wanted], binary=binary,
            parameters={"precision": info.precision, "sha256": info.sha256,
                        "threshold": info.threshold, "calibration": info.calibration,
                        "request_id": call.request_id})
        return Response(content, headers=headers)

    @api.post("/v2/models/{name}/infer", responses=_ERRORS, openapi_extra=_V2_INFER_BODY,
              summary="KServe v2 inference (JSON or binary tensors)")
    async def v2_infer(self, request: Request, name: str) -> Response:
        call = Call("/v2/models/{name}/infer")
        return await self.handle(request, call,
                                 lambda: self._v2_infer(request, call, name, None))

    @api.post("/v2/models/{name}/versions/{version}/infer", responses=_ERRORS,
              openapi_extra=_V2_INFER_BODY, summary="KServe v2 inference, one version")
    async def v2_infer_version(self, request: Request, name: str, version: str) -> Response:
        call = Call("/v2/models/{name}/versions/{version}/infer")
        return await self.handle(request, call,
                                 lambda: self._v2_infer(request, call, name, version))
