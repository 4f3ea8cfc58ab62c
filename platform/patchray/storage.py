"""Storage URIs: a local path or ``s3://bucket/prefix`` resolved to a pyarrow filesystem.

S3-compatible stores (MinIO, Ceph, moto) are reached with ``PATCHRAY_S3_ENDPOINT`` (or the
AWS SDK's ``AWS_ENDPOINT_URL``); credentials come from the usual AWS environment variables.
"""

from __future__ import annotations

import json
import os
from typing import Any
from urllib.parse import urlparse

import pyarrow.fs as pafs

from patchray.errors import StorageError


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def s3_endpoint() -> str | None:
    return os.environ.get("PATCHRAY_S3_ENDPOINT") or os.environ.get("AWS_ENDPOINT_URL")


def s3_filesystem() -> pafs.S3FileSystem:
    """An S3 filesystem honouring the endpoint override (plain HTTP for loopback test stores)."""
    endpoint = s3_endpoint()
    kwargs: dict[str, Any] = {
        "region": os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    }
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs["endpoint_override"] = parsed.netloc or parsed.path
        kwargs["scheme"] = parsed.scheme or "http"
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """Return ``(filesystem, path)`` for a local path, ``file://`` or ``s3://`` URI."""
    if not uri:
        raise StorageError("empty storage URI; expected a local path or s3://bucket/prefix")
    if uri.startswith("s3://"):
        return s3_filesystem(), uri[len("s3://") :].rstrip("/")
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    elif "://" in uri:
        raise StorageError(f"unsupported storage URI {uri!r}: expected a local path or s3://")
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    return "/".join([uri.rstrip("/"), *[p.strip("/") for p in parts]])


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object; local writes go through a temporary file and a rename."""
    fs, path = resolve(uri)
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    if isinstance(fs, pafs.LocalFileSystem):
        tmp = f"{path}.tmp-{os.getpid()}"
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        fs.move(tmp, path)
    else:  # an S3 PUT is atomic: readers see the old object or the new one
        with fs.open_output_stream(path) as f:
            f.write(data)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    try:
        with fs.open_input_stream(path) as f:
            return f.read()
    except FileNotFoundError as e:
        raise StorageError(f"{uri}: not found") from e


def write_json(uri: str, obj: Any) -> None:
    write_bytes(uri, json.dumps(obj, indent=2, sort_keys=True).encode())


def read_json(uri: str) -> Any:
    data = read_bytes(uri)
    try:
        return json.loads(data)
    except json.JSONDecodeError as e:
        raise StorageError(f"{uri}: not valid JSON ({e})") from e


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound
