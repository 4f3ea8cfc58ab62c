"""API keys: tokens shown once and stored hashed, checks, revocation, the replica cache."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import subprocess
import sys
import textwrap
import threading

import pytest

from patchray.errors import ConfigError, StorageError
from patchray.serving.keys import (KEYS_ENV, AuthResult, KeyCache, KeySnapshot, KeyStore,
                                   default_keys_uri)


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(str(tmp_path / "service" / "keys.json"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _bearer(token: str) -> str:
    return f"Bearer {token}"


# --------------------------------------------------------------------------- the store


def test_the_token_is_returned_once_and_only_its_hash_is_stored(store):
    record, token = store.create("lab-a")
    prefix, key_id, secret = token[:4], token[4:12], token[13:]
    assert prefix == "prk_" and token[12] == "_" and key_id == record.key_id
    assert len(key_id) == 8 and int(key_id, 16) >= 0 and len(secret) == 43
    text = open(store.uri).read()
    assert secret not in text and token not in text
    (stored,) = json.loads(text)["keys"]
    assert stored == {"key_id": key_id, "client": "lab-a",
                      "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                      "created": stored["created"], "revoked": None}
    assert json.loads(text)["version"] == 1
    assert stored["created"].endswith("Z")
    assert "sha256" not in repr(record) and secret not in repr(record)


def test_list_shows_every_key_in_creation_order(store):
    assert store.list() == []  # no store yet: no keys, not an error
    ids = [store.create(c)[0].key_id for c in ("lab-a", "lab-b", "lab-a")]
    assert [(r.key_id, r.client) for r in store.list()] == list(zip(ids, ["lab-a", "lab-b",
                                                                       "lab-a"]))


@pytest.mark.parametrize("client", ["", "a" * 65, "lab a", "lab/a", "läb", "a\nb"])
def test_client_names_are_validated(store, client):
    with pytest.raises(ConfigError, match="client name .* expected 1-64 characters"):
        store.create(client)
    assert not os.path.exists(store.uri)


def test_client_names_may_use_letters_digits_dot_dash_underscore(store):
    assert store.create("Lab-A.2_x" + "y" * 55)[0].client == "Lab-A.2_x" + "y" * 55


def test_revoking_is_idempotent_and_unknown_ids_are_named(store):
    record, _ = store.create("lab-a")
    first = store.revoke(record.key_id)
    assert first.revoked is not None and first.key_id == record.key_id
    again = store.revoke(record.key_id)
    assert again.revoked == first.revoked
    with pytest.raises(ConfigError, match=r"no key 'deadbeef' \(keys: " + record.key_id):
        store.revoke("deadbeef")
    with pytest.raises(ConfigError, match="key id 'nope' is not valid: expected 8 hex"):
        store.revoke("nope")


def test_default_uri_is_the_environment_else_runs_service(monkeypatch):
    monkeypatch.delenv(KEYS_ENV, raising=False)
    assert default_keys_uri() == "runs/service/keys.json"
    monkeypatch.setenv(KEYS_ENV, "s3://bucket/keys.json")
    assert default_keys_uri() == "s3://bucket/keys.json"


@pytest.mark.parametrize("doc, field", [
    ({"version": 1, "keys": [{"key_id": "0123abcd", "client": "a", "created":
                              "2026-01-01T00:00:00Z", "revoked": None}]}, "keys.0.sha256"),
    ({"version": 1, "keys": [{"key_id": "0123abcd", "client": "a", "sha256": "0" * 64,
                              "created": "2026-01-01T00:00:00Z", "revoked": None,
                              "secret": "x"}]}, "keys.0.secret"),
    ({"version": 2, "keys": []}, "version"),
    ({"keys": []}, "version"),
    ({"version": 1, "keys": [{"key_id": "XYZ", "client": "a", "sha256": "0" * 64,
                              "created": "2026-01-01T00:00:00Z"}]}, "keys.0.key_id"),
])
def test_a_bad_document_names_the_uri_and_the_field(store, doc, field):
    os.makedirs(os.path.dirname(store.uri))
    with open(store.uri, "w") as f:
        json.dump(doc, f)
    with pytest.raises(StorageError, match=rf"{store.uri}: not a patchray key store .*{field}"):
        store.load()


def test_a_document_that_is_not_json_names_the_uri(store):
    os.makedirs(os.path.dirname(store.uri))
    with open(store.uri, "w") as f:
        f.write("{not json")
    with pytest.raises(StorageError, match=f"{store.uri}: .*not valid JSON"):
        store.list()


def test_concurrent_creates_in_threads_all_survive(store):
    tokens: list[str] = []
    lock = threading.Lock()

    def create(i: int) -> None:
        for j in range(5):
            _, token = store.create(f"t{i}-{j}")
            with lock:
                tokens.append(token)

    threads = [threading.Thread(target=create, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = store.list()
    assert len(records) == 40 == len({r.key_id for r in records})
    snapshot = store.load()
    assert all(snapshot.check(_bearer(t)).status == 200 for t in tokens)


CREATE_MANY = """
import sys
from patchray.serving.keys import KeyStore
store = KeyStore(sys.argv[1])
for i in range(15):
    print(store.create(f"{sys.argv[2]}-{i}")[1], flush=True)
"""


def test_concurrent_creates_from_two_processes_all_survive(store):
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(CREATE_MANY), store.uri,
                               name], stdout=subprocess.PIPE, text=True)
             for name in ("p1", "p2")]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    tokens = [t for out in outs for t in out.split()]
    assert len(tokens) == 30
    assert sorted(r.client for r in store.list()) == sorted(
        f"{p}-{i}" for p in ("p1", "p2") for i in range(15))
    snapshot = store.load()
    assert {snapshot.check(_bearer(t)).status for t in tokens} == {200}


# --------------------------------------------------------------------------- checking


def test_a_good_key_is_200_with_its_client(store):
    record, token = store.create("lab-a")
    result = store.load().check(_bearer(token))
    assert result == AuthResult(200, "lab-a", record.key_id, "ok") and result.ok
    assert store.load().check(f"bearer   {token}  ").status == 200  # scheme is case-blind


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic abc", "prk_x",
                                    "Token prk_0123abcd_" + "a" * 43])
def test_a_missing_or_non_bearer_header_is_401(store, header):
    store.create("lab-a")
    result = store.load().check(header)
    assert result.status == 401 and result.client is None and not result.ok


@pytest.mark.parametrize("token", ["prk_", "prk_0123abcd", "prk_0123ABCD_" + "a" * 43,
                                   "prk_0123abc_" + "a" * 43, "xyz_0123abcd_" + "a" * 43,
                                   "prk_0123abcd_short", "prk_0123abcd_" + "a" * 40 + "!!!"])
def test_a_malformed_token_is_401_and_never_echoed(store, token):
    store.create("lab-a")
    result = store.load().check(_bearer(token))
    assert result.status == 401 and result.client is None
    assert result.reason == "malformed API key: expected prk_<key id>_<secret>"  # fixed text


def test_a_wrong_secret_and_an_unknown_id_are_the_same_401(store):
    record, token = store.create("lab-a")
    wrong = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    snapshot = store.load()
    bad_secret = snapshot.check(_bearer(wrong))
    unknown = snapshot.check(_bearer("prk_00000000_" + token[13:]))
    assert (bad_secret.status, bad_secret.client, bad_secret.reason) == (401, None,
                                                                         "invalid API key")
    assert (unknown.status, unknown.client, unknown.reason) == (401, None, "invalid API key")
    assert bad_secret.key_id == record.key_id and unknown.key_id == "00000000"
    assert token[13:] not in bad_secret.reason + unknown.reason


def test_a_revoked_key_is_403(store):
    record, token = store.create("lab-a")
    _, other = store.create("lab-b")
    store.revoke(record.key_id)
    snapshot = store.load()
    assert snapshot.check(_bearer(token)) == AuthResult(403, "lab-a", record.key_id,
                                                        "API key revoked")
    assert snapshot.check(_bearer(other)).status == 200


def test_a_snapshot_does_not_change_when_the_store_does(store):
    record, token = store.create("lab-a")
    snapshot = store.load()
    store.revoke(record.key_id)
    assert snapshot.check(_bearer(token)).status == 200
    assert isinstance(snapshot, KeySnapshot) and len(snapshot) == 1


# --------------------------------------------------------------------------- the cache


def test_the_cache_picks_up_a_revocation_after_refresh_s_and_not_before(store):
    record, token = store.create("lab-a")
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=5.0, clock=clock)
    assert cache.check(_bearer(token)).status == 200
    store.revoke(record.key_id)
    clock.now += 4.9
    assert cache.check(_bearer(token)).status == 200
    clock.now += 0.1
    assert cache.check(_bearer(token)).status == 403


def test_the_cache_picks_up_a_new_key_after_refresh_s(store):
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=2.0, clock=clock)
    _, first = store.create("lab-a")
    assert cache.check(_bearer(first)).status == 200
    _, token = store.create("lab-b")
    assert cache.check(_bearer(token)).status == 401
    clock.now += 2.0
    assert cache.check(_bearer(token)).status == 200


def test_the_cache_reads_storage_at_most_once_per_interval(store, monkeypatch):
    _, token = store.create("lab-a")
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=5.0, clock=clock)
    loads = []
    real = cache.store.load
    monkeypatch.setattr(cache.store, "load", lambda: loads.append(1) or real())
    for _ in range(100):
        cache.check(_bearer(token))
        clock.now += 0.1
    assert len(loads) == 2  # at 0 and at 5 s


def test_a_storage_failure_keeps_the_last_snapshot_and_warns_once(store, monkeypatch, caplog):
    record, token = store.create("lab-a")
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=1.0, clock=clock)
    assert cache.check(_bearer(token)).status == 200

    def down():
        raise StorageError(f"cannot read {store.uri}: endpoint unreachable")

    real = cache.store.load
    monkeypatch.setattr(cache.store, "load", down)
    store.revoke(record.key_id)
    with caplog.at_level(logging.WARNING, logger="patchray.serving.keys"):
        for _ in range(5):
            clock.now += 1.0
            assert cache.check(_bearer(token)).status == 200  # the last good keys
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "keeping the last good keys" in warnings[0].getMessage()
    assert store.uri in warnings[0].getMessage()
    monkeypatch.setattr(cache.store, "load", real)
    clock.now += 1.0
    assert cache.check(_bearer(token)).status == 403  # readable again: the revocation lands


def test_a_corrupt_document_also_keeps_the_last_snapshot(store):
    _, token = store.create("lab-a")
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=1.0, clock=clock)
    assert cache.check(_bearer(token)).status == 200
    with open(store.uri, "w") as f:
        f.write('{"version": 1, "keys": [{"oops": 1}]}')
    clock.now += 1.0
    assert cache.check(_bearer(token)).status == 200


def test_without_any_good_snapshot_the_cache_fails_closed_with_503(store, monkeypatch):
    _, token = store.create("lab-a")
    clock = Clock()
    cache = KeyCache(store.uri, refresh_s=5.0, clock=clock)
    real = cache.store.load
    monkeypatch.setattr(cache.store, "load", lambda: (_ for _ in ()).throw(OSError("down")))
    assert cache.check(_bearer(token)) == AuthResult(503, reason="key store unavailable")
    assert cache.snapshot() is None
    monkeypatch.setattr(cache.store, "load", real)
    clock.now += 1.0  # with nothing to serve from, it retries sooner than refresh_s
    assert cache.check(_bearer(token)).status == 200


def test_a_missing_store_is_an_empty_snapshot_not_an_outage(tmp_path):
    cache = KeyCache(str(tmp_path / "none.json"), clock=Clock())
    assert cache.check("Bearer prk_0123abcd_" + "a" * 43).status == 401


def test_refresh_must_be_positive(store):
    with pytest.raises(ConfigError, match="refresh_s is 0"):
        KeyCache(store.uri, refresh_s=0)
