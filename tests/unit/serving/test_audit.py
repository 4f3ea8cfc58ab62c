"""Audit records: one append-only file per writer and day, fsynced, merged by the query."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import stat
import subprocess
import sys
import textwrap
import time

import pytest
from pydantic import ValidationError

from patchray.errors import ConfigError, StorageError
from patchray.serving.audit import (AUDIT_ENV, AuditLog, AuditRecord, default_audit_dir,
                                    format_table, parse_time, query_audit, safe_writer_id,
                                    writer_id_for)

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


def fields(**extra) -> dict:
    base = {"request_id": "r1", "client": "lab-a", "key_id": "0123abcd", "route": "/v1/classify",
            "status": 200, "outcome": "ok", "model": "tiny", "model_version": "2",
            "model_sha256": "a" * 64, "input_sha256": ["b" * 64], "n_patches": 1,
            "latency_ms": 12.5}
    return {**base, **extra}


class Clock:
    def __init__(self, t: dt.datetime = T0) -> None:
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def tick(self, **delta: float) -> None:
        self.t += dt.timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def audit(tmp_path, clock):
    log = AuditLog(tmp_path / "audit", "node1234-ingress#abc-42", now=clock)
    yield log
    log.close()


def _query(root, **filters):
    return query_audit(root, **{"since": None, "until": None, "client": None,
                                "model_version": None, "model": None, "outcome": None,
                                "limit": None, **filters})


# --------------------------------------------------------------------------- records


def test_a_record_is_one_compact_json_line_with_time_and_writer(audit, tmp_path, clock):
    clock.t = T0.replace(microsecond=123456)
    record = audit.record(**fields())
    assert audit.path == tmp_path / "audit" / "2026-03-01" / "node1234-ingress_abc-42.jsonl"
    line = audit.path.read_text()
    assert line.endswith("}\n") and line.count("\n") == 1 and ", " not in line
    doc = json.loads(line)
    assert doc["time"] == "2026-03-01T12:00:00.123Z" and doc["writer"] == audit.writer
    assert {k: doc[k] for k in fields()} == fields()
    assert record == AuditRecord.model_validate_json(line)
    assert oct(os.stat(audit.path).st_mode & 0o777) in ("0o640", "0o600", "0o440")


def test_a_misspelt_field_fails_loudly(audit):
    with pytest.raises(ValidationError, match="lantency_ms"):
        audit.record(**fields(lantency_ms=3))
    with pytest.raises(ValidationError, match="input_sha256.0"):
        audit.record(**fields(input_sha256=["not-a-hash"]))
    with pytest.raises(ValueError, match="time, writer are set by AuditLog"):
        audit.record(**fields(time="now", writer="me"))
    assert audit.path is None  # nothing was written


def test_a_refused_request_needs_no_model_or_client(audit):
    record = audit.record(request_id="r2", route="/v1/classify", status=401,
                          outcome="unauthorized", latency_ms=0.3)
    assert record.client is None and record.input_sha256 == [] and record.n_patches == 0


def test_writer_ids_become_safe_file_names():
    assert safe_writer_id("abcd1234-Classifier#x/../y-7") == "abcd1234-Classifier_x_.._y-7"
    assert writer_id_for("0123456789abcdef", "ingress#1", 42) == "01234567-ingress_1-42"
    assert "/" not in safe_writer_id("../../etc/passwd")
    with pytest.raises(ConfigError, match="writer id '///' is not usable"):
        safe_writer_id("///")


def test_default_dir_is_the_environment_else_runs_service(monkeypatch):
    monkeypatch.delenv(AUDIT_ENV, raising=False)
    assert default_audit_dir() == "runs/service/audit"
    monkeypatch.setenv(AUDIT_ENV, "/mnt/audit")
    assert default_audit_dir() == "/mnt/audit"


def test_object_store_uris_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="not a local path"):
        AuditLog("s3://bucket/audit", "w")
    with pytest.raises(ConfigError, match="not a local path"):
        _query("s3://bucket/audit")


# --------------------------------------------------------------------------- files


def test_files_are_only_appended(audit, clock):
    audit.record(**fields(request_id="a"))
    before = audit.path.read_bytes()
    inode = os.stat(audit.path).st_ino
    for i in range(3):
        clock.tick(seconds=1)
        audit.record(**fields(request_id=f"b{i}"))
        after = audit.path.read_bytes()
        assert len(after) > len(before) and after.startswith(before)
        before = after
    assert os.stat(audit.path).st_ino == inode  # never replaced by a rename


def test_a_new_log_on_the_same_file_appends_after_what_is_there(tmp_path, clock):
    with AuditLog(tmp_path, "w", now=clock) as first:
        first.record(**fields(request_id="a"))
        old = first.path.read_bytes()
    with AuditLog(tmp_path, "w", now=clock) as second:
        second.record(**fields(request_id="b"))
        assert second.path.read_bytes().startswith(old)
    assert [r.request_id for r in _query(tmp_path)] == ["a", "b"]


def test_a_new_utc_day_starts_a_new_file(tmp_path):
    clock = Clock(dt.datetime(2026, 3, 1, 23, 59, 59, 999000, tzinfo=UTC))
    with AuditLog(tmp_path, "w", now=clock) as log:
        log.record(**fields(request_id="late"))
        clock.tick(milliseconds=2)
        log.record(**fields(request_id="early"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl")) == [
        "2026-03-01/w.jsonl", "2026-03-02/w.jsonl"]
    assert [r.request_id for r in _query(tmp_path)] == ["late", "early"]


def test_the_day_is_utc_whatever_the_clock_zone(tmp_path):
    tz = dt.timezone(dt.timedelta(hours=-5))
    clock = Clock(dt.datetime(2026, 3, 1, 21, 0, tzinfo=tz))  # 02:00 UTC on the 2nd
    with AuditLog(tmp_path, "w", now=clock) as log:
        log.record(**fields())
    assert (tmp_path / "2026-03-02" / "w.jsonl").is_file()
    assert json.loads((tmp_path / "2026-03-02" / "w.jsonl").read_text())["time"] == \
        "2026-03-02T02:00:00.000Z"


def test_a_background_thread_fsyncs_only_after_writes(tmp_path, monkeypatch):
    synced = []  # fsyncs of the file (those of its new folders do not count)
    real = os.fsync

    def fsync(fd: int) -> None:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(fd)
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    log = AuditLog(tmp_path, "w", fsync_interval_s=0.02)
    time.sleep(0.15)
    assert synced == []  # nothing written, nothing to sync
    log.record(**fields())
    deadline = time.time() + 5
    while not synced and time.time() < deadline:
        time.sleep(0.01)
    assert synced, "no fsync after a write"
    n = len(synced)
    time.sleep(0.15)
    assert len(synced) == n  # no writes since: no more fsyncs
    log.close()
    assert len(synced) == n + 1  # close fsyncs once more
    assert not log._thread.is_alive()
    log.close()  # idempotent
    with pytest.raises(StorageError, match="is closed"):
        log.record(**fields())


def test_the_fsync_interval_must_be_positive(tmp_path):
    with pytest.raises(ConfigError, match="fsync_interval_s is 0"):
        AuditLog(tmp_path, "w", fsync_interval_s=0)


WRITER = """
import sys
from patchray.serving.audit import AuditLog
log = AuditLog(sys.argv[1], sys.argv[2], fsync_interval_s=0.01)
for i in range(200):
    log.record(request_id=f"{sys.argv[2]}-{i}", client=sys.argv[2], route="/v1/classify",
               status=200, outcome="ok", n_patches=1, latency_ms=1.0)
log.close()
"""


def test_two_writers_in_two_processes_append_concurrently_and_the_query_merges(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(WRITER), str(tmp_path),
                               name]) for name in ("w1", "w2")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    records = _query(tmp_path)
    assert len(records) == 400
    assert [r.time for r in records] == sorted(r.time for r in records)
    for name in ("w1", "w2"):  # each writer's own order survives the merge
        mine = [r.request_id for r in records if r.writer == name]
        assert mine == [f"{name}-{i}" for i in range(200)]
    assert len(list(tmp_path.rglob("*.jsonl"))) == 2


# --------------------------------------------------------------------------- the query


def _fill(root, clock) -> None:
    rows = [("lab-a", "1", "ok"), ("lab-b", "1", "ok"), ("lab-a", "2", "ok"),
            ("lab-a", "2", "unsupported_media_type"), (None, None, "unauthorized")]
    with AuditLog(root, "w1", now=clock) as w1, AuditLog(root, "w2", now=clock) as w2:
        for i, (client, version, outcome) in enumerate(rows):
            log = w1 if i % 2 else w2
            status = 200 if outcome == "ok" else 415
            log.record(request_id=f"r{i}", client=client, route="/v1/classify", status=status,
                       outcome=outcome, model="tiny" if version else None,
                       model_version=version, latency_ms=1.0 + i)
            clock.tick(hours=6)  # five records over a day and a bit: two day folders


def test_filters_by_client_version_model_and_outcome(tmp_path, clock):
    _fill(tmp_path, clock)
    ids = lambda **f: [r.request_id for r in _query(tmp_path, **f)]  # noqa: E731
    assert ids() == ["r0", "r1", "r2", "r3", "r4"]
    assert ids(client="lab-a") == ["r0", "r2", "r3"]
    assert ids(model_version="2") == ["r2", "r3"]
    assert ids(client="lab-a", model_version="1") == ["r0"]
    assert ids(model="tiny") == ["r0", "r1", "r2", "r3"]
    assert ids(outcome="ok") == ["r0", "r1", "r2"]
    assert ids(client="nobody") == []
    assert ids(limit=2) == ["r3", "r4"]  # the most recent two, oldest first


def test_filters_by_time_inclusive_and_naive_means_utc(tmp_path, clock):
    _fill(tmp_path, clock)
    ids = lambda **f: [r.request_id for r in _query(tmp_path, **f)]  # noqa: E731
    assert ids(since=T0 + dt.timedelta(hours=12)) == ["r2", "r3", "r4"]
    assert ids(until=T0 + dt.timedelta(hours=6)) == ["r0", "r1"]
    assert ids(since=T0 + dt.timedelta(hours=6), until=T0 + dt.timedelta(hours=18)) == [
        "r1", "r2", "r3"]
    naive = (T0 + dt.timedelta(hours=18)).replace(tzinfo=None)
    assert ids(since=naive) == ["r3", "r4"]
    other_zone = (T0 + dt.timedelta(hours=18)).astimezone(dt.timezone(dt.timedelta(hours=9)))
    assert ids(since=other_zone) == ["r3", "r4"]
    assert ids(since=T0 + dt.timedelta(days=3)) == []


def test_only_the_day_folders_in_range_are_read(tmp_path, clock):
    _fill(tmp_path, clock)
    (tmp_path / "2026-02-01").mkdir()
    (tmp_path / "2026-02-01" / "w9.jsonl").write_text("garbage that would warn\n")
    (tmp_path / "notes").mkdir()  # not a day folder: ignored
    assert len(_query(tmp_path, since=T0)) == 5


def test_a_torn_last_line_is_skipped_with_a_warning(tmp_path, clock, caplog):
    with AuditLog(tmp_path, "w", now=clock) as log:
        log.record(**fields(request_id="whole"))
        path = log.path
    with open(path, "ab") as f:
        f.write(b'{"time":"2026-03-01T12:00:01.000Z","writer":"w","request_id":"to')
    with caplog.at_level(logging.WARNING, logger="patchray.serving.audit"):
        records = _query(tmp_path)
    assert [r.request_id for r in records] == ["whole"]
    assert any("torn last line" in r.getMessage() and str(path) in r.getMessage()
               for r in caplog.records)


def test_a_writer_after_a_torn_line_starts_its_record_on_a_new_line(tmp_path, clock, caplog):
    with AuditLog(tmp_path, "w", now=clock) as log:
        log.record(**fields(request_id="a"))
        path = log.path
    torn = b'{"time":"2026-03-01T12:00:01.000Z","wri'
    with open(path, "ab") as f:
        f.write(torn)
    before = path.read_bytes()
    with AuditLog(tmp_path, "w", now=clock) as log:  # the same id again (a pid reused)
        log.record(**fields(request_id="b"))
    assert path.read_bytes().startswith(before)  # the torn bytes stay: append only
    with caplog.at_level(logging.WARNING, logger="patchray.serving.audit"):
        assert [r.request_id for r in _query(tmp_path)] == ["a", "b"]
    assert any("not an audit record" in r.getMessage() for r in caplog.records)


def test_a_missing_folder_and_a_bad_limit_are_named(tmp_path):
    with pytest.raises(StorageError, match=f"no audit folder at {tmp_path / 'none'}"):
        _query(tmp_path / "none")
    with pytest.raises(ConfigError, match="limit is 0"):
        _query(tmp_path, limit=0)


def test_a_new_log_creates_its_folder_so_an_idle_service_queries_empty(tmp_path):
    AuditLog(tmp_path / "fresh", "w").close()
    assert _query(tmp_path / "fresh") == []


# --------------------------------------------------------------------------- CLI helpers


@pytest.mark.parametrize("text, expected", [
    ("15m", T0 - dt.timedelta(minutes=15)), ("2h", T0 - dt.timedelta(hours=2)),
    ("1d", T0 - dt.timedelta(days=1)), ("30s", T0 - dt.timedelta(seconds=30)),
    ("1w", T0 - dt.timedelta(weeks=1)), ("1.5h", T0 - dt.timedelta(minutes=90)),
    ("2026-03-01T08:00:00Z", dt.datetime(2026, 3, 1, 8, tzinfo=UTC)),
    ("2026-03-01T08:00:00+01:00", dt.datetime(2026, 3, 1, 7, tzinfo=UTC)),
    ("2026-03-01 08:00", dt.datetime(2026, 3, 1, 8, tzinfo=UTC)),
    ("2026-03-01", dt.datetime(2026, 3, 1, tzinfo=UTC)),
])
def test_parse_time_takes_iso_or_an_age(text, expected):
    assert parse_time(text, now=T0) == expected


@pytest.mark.parametrize("text", ["yesterday", "15", "15 minutes", "-2h", "2026-13-01"])
def test_parse_time_names_what_it_expects(text):
    with pytest.raises(ConfigError, match=f"time '{text}' is not valid: expected ISO-8601"):
        parse_time(text, now=T0)


def test_format_table_aligns_the_columns(tmp_path, clock):
    _fill(tmp_path, clock)
    lines = format_table(_query(tmp_path, limit=2)).splitlines()
    assert lines[0].split() == ["time", "client", "route", "status", "model@version",
                                "n_patches", "latency_ms"]
    assert lines[1].split() == ["2026-03-02T06:00:00.000Z", "lab-a", "/v1/classify", "415",
                                "tiny@2", "0", "4.0"]
    assert lines[2].split() == ["2026-03-02T12:00:00.000Z", "-", "/v1/classify", "415", "-",
                                "0", "5.0"]
    assert len({line.index("/v1") for line in lines[1:]}) == 1
