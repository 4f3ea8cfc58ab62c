"""`patchray keys` and `patchray audit`: what they print, and that they start no Ray."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import textwrap

import pytest

from patchray import cli
from patchray.serving.audit import AUDIT_ENV, AuditLog
from patchray.serving.keys import KEYS_ENV, KeyStore


@pytest.fixture
def keys(tmp_path) -> str:
    return str(tmp_path / "keys.json")


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --------------------------------------------------------------------------- keys


def test_keys_create_prints_the_token_once_and_says_it_is_not_stored(capsys, keys):
    code, out, err = _run(capsys, "keys", "--store", keys, "create", "lab-a")
    assert code == 0
    token = out.strip()
    assert token.startswith("prk_") and len(out.splitlines()) == 1  # stdout: the token alone
    assert "not stored" in err and "cannot be shown again" in err and token not in err
    result = KeyStore(keys).load().check(f"Bearer {token}")
    assert (result.status, result.client) == (200, "lab-a")
    assert token[13:] not in open(keys).read()


def test_keys_list_shows_ids_clients_and_times_never_hashes(capsys, keys):
    store = KeyStore(keys)
    a, _ = store.create("lab-a")
    b, _ = store.create("lab-b")
    store.revoke(b.key_id)
    code, out, _ = _run(capsys, "keys", "--store", keys, "list")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["key_id", "client", "created", "revoked"]
    assert lines[1].split()[:2] == [a.key_id, "lab-a"] and lines[1].split()[3] == "-"
    assert lines[2].split()[:2] == [b.key_id, "lab-b"] and lines[2].split()[3].endswith("Z")
    sha = json.loads(open(keys).read())["keys"][0]["sha256"]
    assert sha not in out and "sha256" not in out


def test_keys_list_json_is_one_object_per_line_without_hashes(capsys, keys):
    record, _ = KeyStore(keys).create("lab-a")
    code, out, _ = _run(capsys, "keys", "--store", keys, "list", "--json")
    assert code == 0
    (row,) = [json.loads(line) for line in out.splitlines()]
    assert row == {"key_id": record.key_id, "client": "lab-a",
                   "created": row["created"], "revoked": None}


def test_keys_list_of_an_empty_store_says_so(capsys, keys):
    assert _run(capsys, "keys", "--store", keys, "list")[1] == f"{keys}: no keys\n"


def test_keys_store_defaults_to_the_environment(capsys, keys, monkeypatch):
    monkeypatch.setenv(KEYS_ENV, keys)
    assert _run(capsys, "keys", "create", "lab-env")[0] == 0
    assert [r.client for r in KeyStore(keys).list()] == ["lab-env"]


def test_keys_revoke_and_its_errors(capsys, keys):
    record, token = KeyStore(keys).create("lab-a")
    code, out, _ = _run(capsys, "keys", "--store", keys, "revoke", record.key_id)
    assert code == 0 and f"key {record.key_id} (lab-a) revoked at" in out
    assert KeyStore(keys).load().check(f"Bearer {token}").status == 403
    code, _, err = _run(capsys, "keys", "--store", keys, "revoke", "deadbeef")
    assert code == cli.EXIT_ERROR and "no key 'deadbeef'" in err
    code, _, err = _run(capsys, "keys", "--store", keys, "create", "bad name")
    assert code == cli.EXIT_ERROR and "client name 'bad name' is not valid" in err


# --------------------------------------------------------------------------- audit


@pytest.fixture
def audit_dir(tmp_path) -> str:
    root = tmp_path / "audit"
    now = dt.datetime.now(dt.UTC)
    times = iter([now - dt.timedelta(hours=3), now - dt.timedelta(minutes=10),
                  now - dt.timedelta(minutes=5)])
    with AuditLog(root, "w1", now=lambda: next(times)) as log:
        log.record(request_id="old", client="lab-a", route="/v1/classify", status=200,
                   outcome="ok", model="tiny", model_version="1", n_patches=2,
                   latency_ms=10.0)
        log.record(request_id="new", client="lab-a", route="/v1/classify", status=200,
                   outcome="ok", model="tiny", model_version="2", n_patches=1,
                   latency_ms=7.25)
        log.record(request_id="denied", route="/v1/classify", status=401,
                   outcome="unauthorized", latency_ms=0.5)
    return str(root)


def test_audit_prints_a_table(capsys, audit_dir):
    code, out, _ = _run(capsys, "audit", "--dir", audit_dir)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["time", "client", "route", "status", "model@version",
                                "n_patches", "latency_ms"]
    assert [line.split()[1:] for line in lines[1:]] == [
        ["lab-a", "/v1/classify", "200", "tiny@1", "2", "10.0"],
        ["lab-a", "/v1/classify", "200", "tiny@2", "1", "7.2"],
        ["-", "/v1/classify", "401", "-", "0", "0.5"]]


def test_audit_json_lines_with_filters_and_a_relative_since(capsys, audit_dir):
    code, out, _ = _run(capsys, "audit", "--dir", audit_dir, "--since", "1h", "--client",
                        "lab-a", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["request_id"] for r in rows] == ["new"]
    assert rows[0]["model_version"] == "2" and rows[0]["time"].endswith("Z")
    ids = lambda *a: [json.loads(x)["request_id"]  # noqa: E731
                      for x in _run(capsys, "audit", "--dir", audit_dir, "--json", *a)[1]
                      .splitlines()]
    assert ids("--model-version", "1") == ["old"]
    assert ids("--outcome", "unauthorized") == ["denied"]
    assert ids("--model", "tiny", "--limit", "1") == ["new"]
    assert ids("--until", "1h") == ["old"]
    assert ids("--since", "2000-01-01T00:00:00Z", "--until", "7m") == ["old", "new"]


def test_audit_with_nothing_matching_and_bad_arguments(capsys, audit_dir, monkeypatch):
    assert _run(capsys, "audit", "--dir", audit_dir, "--client", "x")[1] == \
        "no audit records match\n"
    code, _, err = _run(capsys, "audit", "--dir", audit_dir, "--since", "yesterday")
    assert code == cli.EXIT_ERROR and "time 'yesterday' is not valid" in err
    monkeypatch.setenv(AUDIT_ENV, audit_dir + "-missing")
    code, _, err = _run(capsys, "audit")
    assert code == cli.EXIT_ERROR and "no audit folder at" in err


NO_RAY = """
import sys
from patchray import cli
assert cli.main(["keys", "--store", sys.argv[1], "create", "lab-a"]) == 0
assert cli.main(["keys", "--store", sys.argv[1], "list"]) == 0
assert cli.main(["audit", "--dir", sys.argv[2], "--json"]) == 0
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("ray", "tensorflow"))
assert not heavy, heavy
print("no ray")
"""


def test_keys_and_audit_start_no_ray(tmp_path, keys, audit_dir):
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(NO_RAY), keys, audit_dir],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "no ray" in proc.stdout
