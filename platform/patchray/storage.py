"""Storage URIs: a local path or ``s3://bucket/prefix`` resolved to a pyarrow filesystem.

Every dataset, run and artifact location in patchray is one string, read and written through
this module, so the same job runs against a laptop folder or an object store::

    fs, path = storage.resolve("s3://patchray-data/idc")     # pyarrow FileSystem + path
    storage.write_json("s3://patchray-runs/r1/info.json", {...})
    storage.list_files("s3://patchray-data/idc/train", ".parquet")

S3-compatible stores (MinIO, Ceph, moto) are reached through an endpoint override:
``PATCHRAY_S3_ENDPOINT`` (e.g. ``http://127.0.0.1:9000``), else the AWS SDK's
``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL``. Credentials are ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` and ``AWS_SESSION_TOKEN`` when set, otherwise the AWS SDK's own
chain (profile, instance or pod role); the region is ``AWS_DEFAULT_REGION`` / ``AWS_REGION``.
Buckets are never created implicitly: a typo in a bucket name is an error, not a new bucket.

Failures of the store (missing bucket, refused credentials, unreachable endpoint) raise
:class:`~patchray.errors.StorageError` naming the URI, the endpoint and what to check.
"""

from __future__ import annotations

import functools
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from patchray.errors import NotFoundError, StorageError

ENDPOINT_ENV = ("PATCHRAY_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")
REGION_ENV = ("AWS_DEFAULT_REGION", "AWS_REGION")
# Every variable that decides where s3:// URIs go; Ray processes need the same values.
S3_ENV = (*ENDPOINT_ENV, *CREDENTIAL_ENV, *REGION_ENV)
COPY_CHUNK_BYTES = 8 * 1024 * 1024


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class S3Settings:
    """Where ``s3://`` URIs go, read from the environment by :func:`s3_settings`."""

    endpoint: str | None  # full URL of an S3-compatible store; None means AWS itself
    region: str | None  # None: let the AWS SDK decide (profile, instance metadata)
    access_key: str | None
    secret_key: str | None
    session_token: str | None

    def describe_endpoint(self) -> str:
        return self.endpoint or "AWS S3 (no PATCHRAY_S3_ENDPOINT / AWS_ENDPOINT_URL set)"


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint() -> str | None:
    """The endpoint URL override, or None for AWS itself."""
    for name in ENDPOINT_ENV:
        if os.environ.get(name):
            return os.environ[name]
    return None


def s3_settings() -> S3Settings:
    """Read (and check) the S3 settings from the environment."""
    endpoint = s3_endpoint()
    if endpoint:
        parsed = urlparse(endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise StorageError(
                f"S3 endpoint {endpoint!r} is not a URL: set PATCHRAY_S3_ENDPOINT to "
                "scheme://host:port, e.g. http://127.0.0.1:9000 or https://minio.example.org"
            )
        if parsed.path not in ("", "/"):
            raise StorageError(
                f"S3 endpoint {endpoint!r} has a path ({parsed.path!r}); S3 clients need the "
                "bare scheme://host:port and address buckets themselves"
            )
    key, secret, token = (os.environ.get(n) or None for n in CREDENTIAL_ENV)
    if bool(key) != bool(secret):
        have, missing = (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if key
                         else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID"))
        raise StorageError(f"{have} is set but {missing} is not: set both, or neither to use "
                           "the AWS SDK's default credentials (profile, instance role)")
    region = next((os.environ[n] for n in REGION_ENV if os.environ.get(n)), None)
    if region is None and endpoint:
        region = "us-east-1"  # what MinIO, Ceph and moto expect when none is configured
    return S3Settings(endpoint, region, key, secret, token)


def s3_env() -> dict[str, str]:
    """The S3 variables set in this process, to hand to Ray workers (``runtime_env``)."""
    return {name: os.environ[name] for name in S3_ENV if os.environ.get(name)}


def s3_filesystem() -> pafs.S3FileSystem:
    """A pyarrow S3 filesystem for the current settings (plain HTTP for loopback stores).

    With an endpoint override pyarrow uses path-style addressing (``host/bucket/key``), which
    MinIO, Ceph and moto serve without wildcard DNS. The instance is picklable: Ray Data and
    Ray Train ship it to their workers together with the endpoint and credentials.
    """
    return _s3_filesystem(s3_settings())


@functools.lru_cache(maxsize=8)
def _s3_filesystem(s: S3Settings) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {"allow_bucket_creation": False, "allow_bucket_deletion": False}
    if s.region:
        kwargs["region"] = s.region
    if s.endpoint:
        parsed = urlparse(s.endpoint)
        kwargs["endpoint_override"] = parsed.netloc
        kwargs["scheme"] = parsed.scheme
    if s.access_key:
        kwargs.update(access_key=s.access_key, secret_key=s.secret_key)
        if s.session_token:
            kwargs["session_token"] = s.session_token
    return pafs.S3FileSystem(**kwargs)


def s3fs_filesystem() -> Any:
    """The same store as an fsspec ``s3fs.S3FileSystem``, for fsspec-only consumers (pandas,
    ``fsspec.open``). patchray itself and Ray (Data, Train) use :func:`s3_filesystem`."""
    import s3fs  # imports aiobotocore; only callers that want fsspec pay for it

    s = s3_settings()
    kwargs: dict[str, Any] = {"client_kwargs": {"region_name": s.region} if s.region else {}}
    if s.endpoint:
        kwargs["endpoint_url"] = s.endpoint
    if s.access_key:
        kwargs.update(key=s.access_key, secret=s.secret_key, token=s.session_token)
    return s3fs.S3FileSystem(**kwargs)


# --------------------------------------------------------------------------- URIs


def absolute(uri: str) -> str:
    """A remote URI as it is; a local path made absolute (for processes in other folders)."""
    return uri if is_remote(uri) else str(Path(uri).expanduser().resolve())


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path, ``file://`` or ``s3://`` URI."""
    if not uri:
        raise StorageError("empty storage URI; expected a local path or s3://bucket/prefix")
    if uri.startswith("s3://"):
        path = uri[len("s3://") :].rstrip("/")
        if not path or path.startswith("/") or "//" in path:
            raise StorageError(f"malformed S3 URI {uri!r}: expected s3://bucket/prefix")
        return s3_filesystem(), path
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StorageError(f"unsupported storage URI {uri!r}: expected a local path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def ray_storage_args(uri: str) -> dict[str, Any]:
    """``RunConfig`` keyword arguments that store a Ray Train run at ``uri``.

    Remote URIs come with an explicit filesystem: left to itself Ray resolves ``s3://`` with
    ``pyarrow.fs.FileSystem.from_uri``, which ignores ``PATCHRAY_S3_ENDPOINT`` and would
    send the checkpoints to AWS instead of the configured store.
    """
    if not is_remote(uri):
        return {"storage_path": uri}
    fs, path = resolve(uri)
    return {"storage_path": path, "storage_filesystem": fs}


def join(uri: str, *parts: str) -> str:
    """Join path parts onto a URI with ``/`` (never the OS separator: S3 keys use ``/``)."""
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts if p.strip("/")]])


def _bucket(uri: str) -> str:
    return uri[len("s3://") :].split("/", 1)[0]


# --------------------------------------------------------------------------- errors

UNREACHABLE = ("cannot reach the S3 endpoint {endpoint}: check PATCHRAY_S3_ENDPOINT (or "
               "AWS_ENDPOINT_URL) - scheme, host and port - and that the store is running")
NO_BUCKET = ("bucket '{bucket}' does not exist at {endpoint}: create it first (patchray never "
             "creates buckets) or fix the bucket name")
DENIED = ("access denied by {endpoint}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (and "
          "AWS_SESSION_TOKEN for temporary credentials) and that they may use bucket '{bucket}'")
# Substrings of pyarrow (AWS SDK for C++) and botocore messages, and what the user should check.
_DIAGNOSES = (
    (("NETWORK_CONNECTION", "curlCode", "Could not connect", "Connection refused",
      "EndpointConnectionError", "Could not resolve host"), UNREACHABLE),
    (("NO_SUCH_BUCKET", "NoSuchBucket", "allow_bucket_creation"), NO_BUCKET),
    (("INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId", "SIGNATURE_DOES_NOT_MATCH",
      "SignatureDoesNotMatch", "ACCESS_DENIED", "AccessDenied", "EXPIRED_TOKEN", "ExpiredToken",
      "Forbidden", "PermissionError"), DENIED),
)


def _diagnose(exc: BaseException, uri: str, action: str) -> StorageError:
    text = f"{type(exc).__name__}: {exc}"
    if is_remote(uri):
        s = s3_settings()
        for needles, hint in _DIAGNOSES:
            if any(n in text for n in needles):
                detail = hint.format(endpoint=s.describe_endpoint(), bucket=_bucket(uri))
                return StorageError(f"cannot {action} {uri}: {detail} ({text})")
        return StorageError(f"cannot {action} {uri} at {s.describe_endpoint()}: {text}")
    return StorageError(f"cannot {action} {uri}: {text}")


def _check_bucket(fs: pafs.FileSystem, uri: str, action: str) -> None:
    """Raise if the bucket of a remote ``uri`` is missing (a HEAD on the bucket)."""
    if not is_remote(uri):
        return
    bucket = _bucket(uri)
    try:
        missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError as e:
        raise _diagnose(e, uri, action) from e
    if missing:
        endpoint = s3_settings().describe_endpoint()
        raise StorageError(f"cannot {action} {uri}: "
                           + NO_BUCKET.format(endpoint=endpoint, bucket=bucket))


@contextmanager
def _translated(fs: pafs.FileSystem, uri: str, action: str) -> Iterator[None]:
    """Turn pyarrow/OS errors into StorageError; a missing object in a missing bucket is
    reported as the missing bucket, the more useful of the two."""
    try:
        yield
    except StorageError:
        raise
    except FileNotFoundError as e:
        _check_bucket(fs, uri, action)
        raise NotFoundError(f"cannot {action} {uri}: not found") from e
    except OSError as e:
        raise _diagnose(e, uri, action) from e


def check_access(uri: str) -> None:
    """Fail fast, before a long job, if ``uri`` cannot serve as a dataset or run location:
    missing bucket, refused credentials, unreachable endpoint, or a file in the way."""
    fs, path = resolve(uri)
    _check_bucket(fs, uri, "access")
    with _translated(fs, uri, "access"):
        info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        raise StorageError(f"{uri} is a file; expected a directory or prefix")


# --------------------------------------------------------------------------- objects


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object atomically: readers see the old content or the new, never part.

    Local writes go through a temporary file in the same directory and a rename; an S3 PUT
    is atomic by itself.
    """
    fs, path = resolve(uri)
    with _translated(fs, uri, "write"):
        if isinstance(fs, pafs.LocalFileSystem):
            fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
            tmp = f"{path}.tmp-{uuid.uuid4().hex[:12]}"
            try:
                with fs.open_output_stream(tmp) as f:
                    f.write(data)
                fs.move(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        else:
            # One PutObject with its Content-Length: a single request, atomic at any size up
            # to S3's 5 GB, where pyarrow's stream would make a multipart upload of chunked
            # parts (and create_dir would PUT empty "dir/" markers other clients list).
            bucket, key = _bucket_key(uri)
            _s3_call(uri, "write", _botocore_client(s3_settings()).put_object, Bucket=bucket,
                     Key=key, Body=data)


def read_bytes(uri: str) -> bytes:
    """A whole object. On ``s3://`` one GET: pyarrow's input streams first HEAD the object
    for its size, which doubles the requests for the small JSON files patchray reads."""
    fs, path = resolve(uri)
    with _translated(fs, uri, "read"):
        if is_remote(uri):
            return _get_object(path)
        with fs.open_input_stream(path) as f:
            return f.read()


def _get_object(path: str) -> bytes:
    try:  # max_concurrency > 1 would HEAD the object for its size first
        return s3fs_filesystem().cat_file(path, max_concurrency=1)
    except OSError:  # FileNotFoundError, PermissionError: _translated words them
        raise
    except Exception as e:  # botocore/aiohttp errors: name them, as pyarrow's would be
        raise OSError(f"{type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------- conditional writes
# pyarrow has no conditional PUT, so these two use botocore (already here for s3fs) on S3,
# and O_EXCL / an flock'd read-modify-write on local disks.

PRECONDITION_CODES = ("PreconditionFailed", "ConditionalRequestConflict")


@functools.lru_cache(maxsize=8)
def _botocore_client(s: S3Settings) -> Any:
    import botocore.config
    import botocore.session

    # Bounded like pyarrow's client: an unreachable store fails in seconds, not minutes.
    config = botocore.config.Config(connect_timeout=10, read_timeout=120,
                                    retries={"max_attempts": 3, "mode": "standard"})
    return botocore.session.Session().create_client(
        "s3", endpoint_url=s.endpoint, region_name=s.region, aws_access_key_id=s.access_key,
        aws_secret_access_key=s.secret_key, aws_session_token=s.session_token, config=config)


def _bucket_key(uri: str) -> tuple[str, str]:
    bucket, _, key = uri[len("s3://") :].partition("/")
    return bucket, key


def _is_precondition_failure(e: Exception) -> bool:
    code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
    return code in PRECONDITION_CODES


def _s3_call(uri: str, action: str, fn: Any, **kwargs: Any) -> Any:
    """One botocore call, its errors worded like pyarrow's (missing bucket, credentials)."""
    try:
        return fn(**kwargs)
    except Exception as e:
        if _is_precondition_failure(e):
            raise
        code = getattr(e, "response", {}).get("Error", {}).get("Code", "")
        if code in ("NoSuchKey", "404"):
            raise NotFoundError(f"cannot {action} {uri}: not found") from e
        raise _diagnose(OSError(f"{code or type(e).__name__}: {e}"), uri, action) from e


def create_object(uri: str, data: bytes) -> bool:
    """Write ``uri`` only if nothing is there yet; return whether this call created it.

    Exactly one of several racing writers wins: ``If-None-Match: *`` on S3, ``O_EXCL`` on a
    local disk (the loser sees False and the winner's content stays)."""
    if is_remote(uri):
        bucket, key = _bucket_key(uri)
        client = _botocore_client(s3_settings())
        try:
            _s3_call(uri, "create", client.put_object, Bucket=bucket, Key=key, Body=data,
                     IfNoneMatch="*")
        except Exception as e:
            if _is_precondition_failure(e):
                return False
            raise
        return True
    path = resolve(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    except OSError as e:
        raise StorageError(f"cannot create {uri}: {e}") from e
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return True


def update_object(uri: str, change: Any, *, attempts: int = 50) -> bytes:
    """Read-modify-write ``uri`` without losing a concurrent update: ``change(old or None)
    -> new bytes``; the new object replaces the old in one atomic write.

    S3: the write is conditional on the ETag read (``If-Match``, or ``If-None-Match: *`` for
    a new object) and retried on conflict. Local: an exclusive ``flock`` on ``<file>.lock``
    serialises writers; readers never lock (they see the old or the new file, by rename)."""
    if is_remote(uri):
        bucket, key = _bucket_key(uri)
        client = _botocore_client(s3_settings())
        for _ in range(attempts):
            try:
                got = _s3_call(uri, "read", client.get_object, Bucket=bucket, Key=key)
                old, condition = got["Body"].read(), {"IfMatch": got["ETag"]}
            except NotFoundError:
                old, condition = None, {"IfNoneMatch": "*"}
            new = change(old)
            try:
                _s3_call(uri, "write", client.put_object, Bucket=bucket, Key=key, Body=new,
                         **condition)
                return new
            except Exception as e:
                if not _is_precondition_failure(e):
                    raise
        raise StorageError(f"cannot update {uri}: {attempts} concurrent writers won in a row")
    import fcntl

    path = resolve(uri)[1]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        old = Path(path).read_bytes() if os.path.exists(path) else None
        new = change(old)
        write_bytes(uri, new)
        return new


def sha256(uri: str) -> str:
    """sha256 of the object at ``uri``, streamed (models can be large)."""
    import hashlib

    fs, path = resolve(uri)
    digest = hashlib.sha256()
    with _translated(fs, uri, "read"), fs.open_input_stream(path) as f:
        while chunk := f.read(COPY_CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def cache_key(uri: str) -> str:
    """A short, stable folder name for a remote location (its endpoint included)."""
    import hashlib

    where = f"{s3_settings().endpoint or 'aws'}|{uri}" if is_remote(uri) else uri
    return hashlib.sha256(where.encode()).hexdigest()[:16]


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise StorageError(f"{uri}: not valid JSON ({e})") from e


def exists(uri: str) -> bool:
    """Whether a file or directory exists at ``uri``. A missing bucket is an error, not False:
    otherwise a typo in the bucket name reads as "no dataset here yet"."""
    fs, path = resolve(uri)
    with _translated(fs, uri, "check"):
        found = fs.get_file_info(path).type != pafs.FileType.NotFound
    if not found:
        _check_bucket(fs, uri, "check")
    return found


def delete(uri: str, *, missing_ok: bool = True) -> bool:
    """Delete one file; return whether it was there. A missing bucket is still an error.

    On S3, pyarrow then PUTs an empty ``parent/`` marker object so the "directory" survives;
    patchray's listings skip it, other S3 clients show it as an entry."""
    fs, path = resolve(uri)
    with _translated(fs, uri, "delete"):
        if fs.get_file_info(path).type == pafs.FileType.NotFound:
            _check_bucket(fs, uri, "delete")
            if missing_ok:
                return False
            raise StorageError(f"cannot delete {uri}: not found")
        fs.delete_file(path)
    return True


def _files_below(fs: pafs.FileSystem, path: str) -> list[pafs.FileInfo]:
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [i for i in fs.get_file_info(selector) if i.type == pafs.FileType.File]


def list_files(uri: str, suffix: str = "") -> list[str]:
    """Every file below ``uri`` (recursive) whose name ends with ``suffix``, as sorted URIs
    (``s3://...`` for remote, absolute paths for local). A missing prefix lists as empty;
    a missing bucket is an error."""
    fs, path = resolve(uri)
    with _translated(fs, uri, "list"):
        infos = _files_below(fs, path)
    if not infos:
        _check_bucket(fs, uri, "list")
    scheme = "s3://" if is_remote(uri) else ""
    return sorted(scheme + i.path for i in infos if i.path.endswith(suffix))


def _copy_file(src_fs: pafs.FileSystem, src: str, dst_fs: pafs.FileSystem, dst: str) -> None:
    # Streamed in chunks, not pafs.copy_files: that creates "dir/" marker objects on S3.
    if isinstance(dst_fs, pafs.LocalFileSystem):
        dst_fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
    with src_fs.open_input_stream(src) as fin, dst_fs.open_output_stream(dst) as fout:
        while chunk := fin.read(COPY_CHUNK_BYTES):
            fout.write(chunk)


def upload_dir(local: str | os.PathLike[str], uri: str) -> list[str]:
    """Copy a local directory tree to ``uri`` (e.g. an exported model); return the URIs
    written. Each object is written atomically; the tree as a whole is not."""
    src = Path(local).resolve()
    if not src.is_dir():
        raise StorageError(f"cannot upload {src}: not a directory")
    rels = sorted(p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_file())
    fs, path = resolve(uri)
    _check_bucket(fs, uri, "upload to")
    with _translated(fs, uri, "upload to"):
        for rel in rels:
            _copy_file(pafs.LocalFileSystem(), str(src / rel), fs, f"{path}/{rel}")
    return [join(uri, rel) for rel in rels]


def download_dir(uri: str, local: str | os.PathLike[str]) -> Path:
    """Copy every file below ``uri`` into the local directory ``local``; return its path."""
    target = Path(local).resolve()
    fs, path = resolve(uri)
    with _translated(fs, uri, "download"):
        infos = _files_below(fs, path)
        if not infos:
            _check_bucket(fs, uri, "download")
            raise StorageError(f"cannot download {uri}: no files there")
        for i in infos:
            dest = target / i.path[len(path) :].lstrip("/")
            _copy_file(fs, i.path, pafs.LocalFileSystem(), str(dest))
    return target
