"""Per-client API keys, stored hashed, in one JSON object at a storage URI (local or s3://).

A token is ``prk_<key_id>_<secret>``: ``key_id`` is 8 hex characters, public (it appears in
``patchray keys list`` and in the audit), and ``secret`` is ``secrets.token_urlsafe(32)``.
The store keeps only ``sha256(secret)``::

    {"version": 1, "keys": [{"key_id": "1f2e3d4c", "client": "lab-a", "sha256": "...",
                             "created": "2026-01-01T12:00:00Z", "revoked": null}]}

Every write is a read-modify-write through :func:`patchray.storage.update_object` (If-Match
on S3, flock locally), so two ``patchray keys create`` racing both survive. A Serve replica
holds a :class:`KeyCache`: a snapshot re-read at most every ``refresh_s`` seconds, so a
revocation takes effect within that interval without a request ever waiting on storage
more than once per interval.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from patchray import storage
from patchray.errors import ConfigError, NotFoundError, PatchrayError, StorageError

log = logging.getLogger(__name__)
KEYS_ENV = "PATCHRAY_KEYS"
DEFAULT_KEYS_URI = "runs/service/keys.json"
TOKEN_PREFIX = "prk_"
CLIENT_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
KEY_ID_PATTERN = r"^[0-9a-f]{8}$"
# token_urlsafe(32) is 43 characters; a little slack either way costs nothing (the hash decides).
TOKEN_RE = re.compile(r"prk_([0-9a-f]{8})_([A-Za-z0-9_-]{16,128})")
UNAVAILABLE = "key store unavailable"
RETRY_S = 1.0  # how soon a replica that never read the store tries again


def default_keys_uri() -> str:
    """``$PATCHRAY_KEYS``, else ``runs/service/keys.json``."""
    return os.environ.get(KEYS_ENV) or DEFAULT_KEYS_URI


def _hash(secret: str) -> str:
    # A fast hash is right here, unlike for passwords: the secret is 256 random bits, so no
    # dictionary or brute-force search can find it from its hash, and a slow KDF (bcrypt,
    # scrypt) would add tens of milliseconds to every request the service answers.
    return hashlib.sha256(secret.encode()).hexdigest()


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def check_client(client: str) -> str:
    if not isinstance(client, str) or not re.match(CLIENT_PATTERN, client):
        raise ConfigError(f"client name {client!r} is not valid: expected 1-64 characters of "
                          "letters, digits, '.', '_' and '-' (e.g. lab-a)")
    return client


def check_key_id(key_id: str) -> str:
    if not re.match(KEY_ID_PATTERN, key_id):
        raise ConfigError(f"key id {key_id!r} is not valid: expected 8 hex characters, as "
                          "shown by `patchray keys list`")
    return key_id


# --------------------------------------------------------------------------- the document


class KeyRecord(BaseModel):
    """One client key as stored: never the token, only its secret's sha256."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    key_id: str = Field(pattern=KEY_ID_PATTERN)
    client: str = Field(pattern=CLIENT_PATTERN)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", repr=False)
    created: AwareDatetime
    revoked: AwareDatetime | None = None


class KeyDocument(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    version: Literal[1]
    keys: tuple[KeyRecord, ...] = ()

    def find(self, key_id: str) -> KeyRecord | None:
        return next((k for k in self.keys if k.key_id == key_id), None)

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2).encode()


def parse_document(data: bytes | None, *, uri: str) -> KeyDocument:
    """The document in ``data`` (None: no store yet, so no keys). Errors name the URI and
    the field, e.g. ``keys.2.sha256``."""
    if data is None:
        return KeyDocument(version=1)
    try:
        doc = KeyDocument.model_validate(json.loads(data))
    except json.JSONDecodeError as e:
        raise StorageError(f"{uri}: not a patchray key store: not valid JSON ({e})") from None
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc'])) or '(document)'}: {err['msg']}"
                             for err in e.errors())
        raise StorageError(f"{uri}: not a patchray key store (expected {{\"version\": 1, "
                           f"\"keys\": [...]}}): {problems}") from None
    ids = [k.key_id for k in doc.keys]
    if len(ids) != len(set(ids)):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        raise StorageError(f"{uri}: keys: key_id {', '.join(dup)} appears more than once")
    return doc


# --------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class AuthResult:
    """What the ingress answers: 200, 401 (no or bad key), 403 (revoked) or 503 (no store).

    ``reason`` is short text for the error body; it never holds any part of the token."""

    status: int
    client: str | None = None
    key_id: str | None = None
    reason: str = "ok"

    @property
    def ok(self) -> bool:
        return self.status == 200


# Compared against when the key_id is unknown, so both failures take the same time.
_NO_HASH = "0" * 64


class KeySnapshot:
    """The keys of one read of the store; immutable, safe to share between threads."""

    def __init__(self, keys: tuple[KeyRecord, ...] = ()):
        self._by_id: Mapping[str, KeyRecord] = MappingProxyType({k.key_id: k for k in keys})

    @classmethod
    def from_document(cls, doc: KeyDocument) -> KeySnapshot:
        return cls(doc.keys)

    def __len__(self) -> int:
        return len(self._by_id)

    def check(self, authorization_header: str | None) -> AuthResult:
        """Check an ``Authorization`` header value: ``Bearer prk_<key_id>_<secret>``."""
        if not authorization_header:
            return AuthResult(401, reason="missing Authorization header: expected Bearer "
                                          "<api key>")
        scheme, _, token = authorization_header.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return AuthResult(401, reason="expected Authorization: Bearer <api key>")
        match = TOKEN_RE.fullmatch(token.strip())
        if match is None:
            return AuthResult(401, reason="malformed API key: expected prk_<key id>_<secret>")
        key_id, secret = match.groups()
        record = self._by_id.get(key_id)
        # One reason for an unknown id and a wrong secret: no probing for which ids exist.
        if not hmac.compare_digest(record.sha256 if record else _NO_HASH, _hash(secret)):
            return AuthResult(401, key_id=key_id, reason="invalid API key")
        assert record is not None  # _NO_HASH is never a sha256 of a secret
        if record.revoked is not None:
            return AuthResult(403, record.client, key_id, reason="API key revoked")
        return AuthResult(200, record.client, key_id)


# --------------------------------------------------------------------------- the store


class KeyStore:
    """Create, list and revoke keys in the document at ``uri`` (local path or s3://)."""

    def __init__(self, uri: str):
        if not uri:
            raise ConfigError(f"no key store URI: pass --store URI or set {KEYS_ENV}")
        self.uri = uri

    def __repr__(self) -> str:
        return f"KeyStore({self.uri!r})"

    def _read(self) -> KeyDocument:
        try:
            return parse_document(storage.read_bytes(self.uri), uri=self.uri)
        except NotFoundError:
            return KeyDocument(version=1)

    def _update(self, change: Callable[[KeyDocument], KeyDocument]) -> KeyDocument:
        new = storage.update_object(
            self.uri, lambda old: change(parse_document(old, uri=self.uri)).to_json())
        return parse_document(new, uri=self.uri)

    def create(self, client: str) -> tuple[KeyRecord, str]:
        """A new key for ``client``: its record and the token, which is shown only now."""
        check_client(client)
        secret = secrets.token_urlsafe(32)

        def add(doc: KeyDocument) -> KeyDocument:
            taken = {k.key_id for k in doc.keys}
            key_id = secrets.token_hex(4)
            while key_id in taken:
                key_id = secrets.token_hex(4)
            record = KeyRecord(key_id=key_id, client=client, sha256=_hash(secret),
                               created=_now())
            return doc.model_copy(update={"keys": (*doc.keys, record)})

        # The key is the last one in the document this write produced (retries included).
        record = self._update(add).keys[-1]
        return record, f"{TOKEN_PREFIX}{record.key_id}_{secret}"

    def list(self) -> list[KeyRecord]:
        return list(self._read().keys)

    def revoke(self, key_id: str) -> KeyRecord:
        """Revoke ``key_id``; revoking a revoked key changes nothing (it keeps its time)."""
        check_key_id(key_id)

        def mark(doc: KeyDocument) -> KeyDocument:
            record = doc.find(key_id)
            if record is None:
                have = ", ".join(k.key_id for k in doc.keys) or "none"
                raise ConfigError(f"{self.uri}: no key {key_id!r} (keys: {have})")
            if record.revoked is not None:
                return doc
            revoked = record.model_copy(update={"revoked": _now()})
            return doc.model_copy(update={"keys": tuple(revoked if k is record else k
                                                        for k in doc.keys)})

        record = self._update(mark).find(key_id)
        assert record is not None
        return record

    def load(self) -> KeySnapshot:
        return KeySnapshot.from_document(self._read())


class KeyCache:
    """A replica's view of the store: a snapshot re-read at most every ``refresh_s``.

    A reload that fails (storage down, a bad document) keeps the last good snapshot and
    logs one warning per outage; with no good snapshot yet every check answers 503
    ("key store unavailable"): fail closed. ``clock`` is injectable for tests."""

    def __init__(self, uri: str, refresh_s: float = 5.0, *,
                 clock: Callable[[], float] = time.monotonic):
        if refresh_s <= 0:
            raise ConfigError(f"refresh_s is {refresh_s}: expected a positive number of seconds")
        self.store = KeyStore(uri)
        self.refresh_s = refresh_s
        self._clock = clock
        self._snapshot: KeySnapshot | None = None
        self._loaded_at: float | None = None  # when the last reload was tried
        self._failing = False
        self._lock = threading.Lock()

    def snapshot(self) -> KeySnapshot | None:
        """The current snapshot (reloaded first if it is due), or None if there never was one."""
        now = self._clock()
        due = self._due(now)
        # Non-blocking: while one thread reloads, the others answer from the old snapshot.
        if due and self._lock.acquire(blocking=self._snapshot is None):
            try:
                self._reload(now)
            finally:
                self._lock.release()
        return self._snapshot

    def _due(self, now: float) -> bool:
        if self._loaded_at is None:
            return True
        # With no snapshot yet every request fails: retry sooner than the refresh interval.
        interval = self.refresh_s if self._snapshot is not None else min(self.refresh_s, RETRY_S)
        return now - self._loaded_at >= interval

    def _reload(self, now: float) -> None:
        if not self._due(now):
            return  # another thread reloaded while this one waited for the lock
        self._loaded_at = now
        try:
            self._snapshot = self.store.load()
        except (PatchrayError, OSError) as e:
            if not self._failing:
                kept = ("keeping the last good keys" if self._snapshot is not None
                        else "refusing requests (503)")
                log.warning("cannot reload the API keys from %s, %s until it is readable: %s",
                            self.store.uri, kept, e)
            self._failing = True
            return
        if self._failing:
            log.info("API keys readable again from %s", self.store.uri)
        self._failing = False

    def check(self, authorization_header: str | None) -> AuthResult:
        snapshot = self.snapshot()
        if snapshot is None:
            return AuthResult(503, reason=UNAVAILABLE)
        return snapshot.check(authorization_header)
