"""Append-only audit records: one JSON line per request, one file per writer and UTC day.

Layout under the audit folder::

    <root>/<YYYY-MM-DD>/<writer_id>.jsonl      writer_id: "<node_id8>-<replica_tag>-<pid>"

Filesystem only: in production the folder is a shared volume (NFS, a Kubernetes PVC) that
every node mounts; object stores cannot append. Each writer (one per Serve replica) appends
to its own file, so no two processes share a file (``O_APPEND`` is not atomic across NFS
clients) and writers never lock. :func:`query_audit` merges the files when reading.

Durability: a record is one ``os.write`` on an ``O_APPEND`` descriptor in the calling
thread, so once :meth:`AuditLog.record` returns the line survives the process crashing; a
daemon thread fsyncs every ``fsync_interval_s`` when there were writes, so a machine crash
loses at most that interval. Files are opened ``O_APPEND | O_CREAT`` and never truncated or
rewritten; a line torn by a crash is skipped by readers with a warning.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_serializer

from patchray import storage
from patchray.errors import ConfigError, StorageError

log = logging.getLogger(__name__)
AUDIT_ENV = "PATCHRAY_AUDIT"
DEFAULT_AUDIT_DIR = "runs/service/audit"
SUFFIX = ".jsonl"
FILE_MODE = 0o640
DIR_MODE = 0o750
HEX64 = r"^[0-9a-f]{64}$"
RELATIVE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def default_audit_dir() -> str:
    """``$PATCHRAY_AUDIT``, else ``runs/service/audit``."""
    return os.environ.get(AUDIT_ENV) or DEFAULT_AUDIT_DIR


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def format_time(t: dt.datetime) -> str:
    """ISO-8601 in UTC with milliseconds and ``Z``: sorts as text, as time."""
    return t.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class AuditRecord(BaseModel):
    """One request as the ingress saw it. ``extra="forbid"``: a misspelt field fails."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time: AwareDatetime
    writer: str
    request_id: str = Field(min_length=1, max_length=128)
    client: str | None = None  # None: no valid key (401)
    key_id: str | None = Field(None, pattern=r"^[0-9a-f]{8}$")
    route: str = Field(min_length=1, description="the route template, never the raw path")
    status: int = Field(ge=100, le=599)
    outcome: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="ok or an error kind")
    model: str | None = None
    model_version: str | None = None
    model_sha256: str | None = Field(None, pattern=HEX64)
    input_sha256: list[Annotated[str, Field(pattern=HEX64)]] = Field(
        default_factory=list, description="one per patch")
    n_patches: int = Field(0, ge=0)
    latency_ms: float = Field(ge=0)

    @field_serializer("time")
    def _time(self, t: dt.datetime) -> str:
        return format_time(t)


# --------------------------------------------------------------------------- writing


def safe_writer_id(writer_id: str) -> str:
    """``writer_id`` as a safe file name: runs of other characters become ``_``."""
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", writer_id).strip("._-")[:120]
    if not safe:
        raise ConfigError(f"audit writer id {writer_id!r} is not usable: expected letters, "
                          "digits, '.', '_' or '-', e.g. <node_id8>-<replica_tag>-<pid>")
    return safe


def writer_id_for(node_id: str, replica_tag: str, pid: int | None = None) -> str:
    """The writer id of a Serve replica: ``<node_id8>-<replica_tag>-<pid>``."""
    return safe_writer_id(f"{node_id[:8]}-{replica_tag}-{pid or os.getpid()}")


def _fsync_dir(path: Path) -> None:
    # A new file's directory entry is durable only once its directory is fsynced.
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on a directory; the data fsyncs still hold
    finally:
        os.close(fd)


def _ends_torn(path: Path, size: int) -> bool:
    with open(path, "rb") as f:
        f.seek(size - 1)
        return f.read(1) != b"\n"


class AuditLog:
    """One writer's audit files under ``root_dir``: ``record(**fields)`` appends a line.

    ``now`` (a UTC clock) is injectable for tests."""

    def __init__(self, root_dir: str | Path, writer_id: str, *, fsync_interval_s: float = 0.2,
                 now: Callable[[], dt.datetime] = utc_now):
        if fsync_interval_s <= 0:
            raise ConfigError(f"fsync_interval_s is {fsync_interval_s}: expected a positive "
                              "number of seconds")
        self.root = _local_root(root_dir)
        self.writer = safe_writer_id(writer_id)
        try:  # now, so `patchray audit` finds the folder before the first request
            self.root.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create the audit folder {self.root}: {e}") from e
        self.fsync_interval_s = fsync_interval_s
        self._now = now
        self._lock = threading.Lock()  # the descriptor and its day; never held over fsync
        self._fd: int | None = None
        self._day: dt.date | None = None
        self._path: Path | None = None
        self._dirty = False
        self._closed = False
        self._fsync_warned = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sync_loop, daemon=True,
                                        name=f"audit-fsync-{self.writer}")
        self._thread.start()

    def __repr__(self) -> str:
        return f"AuditLog({str(self.root)!r}, {self.writer!r})"

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @property
    def path(self) -> Path | None:
        """The file written last (None before the first record)."""
        return self._path

    def record(self, **fields: object) -> AuditRecord:
        """Validate and append one record; it gets ``time`` and ``writer`` here."""
        clash = sorted({"time", "writer"} & fields.keys())
        if clash:
            raise ValueError(f"audit record: {', '.join(clash)} are set by AuditLog, not passed")
        now = self._now()
        now = now.replace(microsecond=now.microsecond // 1000 * 1000)  # as it is written
        record = AuditRecord.model_validate({"time": now, "writer": self.writer, **fields})
        self._append(record.time.astimezone(dt.UTC).date(),
                     record.model_dump_json().encode() + b"\n")
        return record

    def _append(self, day: dt.date, line: bytes) -> None:
        with self._lock:
            if self._closed:
                raise StorageError(f"audit log {self.root} ({self.writer}) is closed")
            fd = self._fd_for(day)
            try:
                written = os.write(fd, line)  # one write: the line is whole or absent
                while written < len(line):  # regular files write fully; but never lose a tail
                    written += os.write(fd, line[written:])
            except OSError as e:
                raise StorageError(f"cannot append to audit file {self._path}: {e}") from e
            self._dirty = True

    def _fd_for(self, day: dt.date) -> int:
        if self._fd is not None and day == self._day:
            return self._fd
        if self._fd is not None:  # a new UTC day: finish yesterday's file
            self._close_fd()
        folder = self.root / day.isoformat()
        path = folder / f"{self.writer}{SUFFIX}"
        try:
            new_dir = not folder.is_dir()
            folder.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
            size = os.fstat(fd).st_size
            if size and _ends_torn(path, size):
                # An earlier process with this id died mid-line: end that line (append only),
                # so the next record starts on its own and is not lost with the torn one.
                os.write(fd, b"\n")
        except OSError as e:
            raise StorageError(f"cannot open audit file {path}: {e}") from e
        _fsync_dir(folder)
        if new_dir:
            _fsync_dir(self.root)
        self._fd, self._day, self._path = fd, day, path
        return fd

    def _close_fd(self) -> None:
        assert self._fd is not None
        try:
            os.fsync(self._fd)
        except OSError as e:
            log.warning("cannot fsync audit file %s: %s", self._path, e)
        os.close(self._fd)
        self._fd = None
        self._dirty = False

    def _sync_loop(self) -> None:
        while not self._stop.wait(self.fsync_interval_s):
            self.sync()

    def sync(self) -> None:
        """fsync the current file if anything was written since the last fsync."""
        with self._lock:
            if not self._dirty or self._fd is None:
                return
            self._dirty = False
            fd = os.dup(self._fd)  # fsync outside the lock: record() never waits on the disk
        try:
            os.fsync(fd)
        except OSError as e:
            if not self._fsync_warned:
                log.warning("cannot fsync audit file %s (records may be lost on a machine "
                            "crash): %s", self._path, e)
            self._fsync_warned = True
        finally:
            os.close(fd)

    def close(self) -> None:
        """Stop the fsync thread, fsync and close the file. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        self._thread.join()
        with self._lock:
            if self._fd is not None:
                self._close_fd()


# --------------------------------------------------------------------------- reading


def _local_root(root_dir: str | Path) -> Path:
    text = str(root_dir)
    if not text:
        raise ConfigError(f"no audit folder: pass --dir DIR or set {AUDIT_ENV}")
    if storage.is_remote(text):
        raise ConfigError(f"audit folder {text!r} is not a local path: the audit log is files "
                          "on a filesystem (a shared volume in production), not an object store")
    return Path(text.removeprefix("file://"))


def _as_utc(t: dt.datetime | None) -> dt.datetime | None:
    if t is None or t.tzinfo is not None:
        return t
    return t.replace(tzinfo=dt.UTC)  # naive times are UTC, as the records are


def _day_dirs(root: Path, since: dt.datetime | None, until: dt.datetime | None) -> list[Path]:
    first = since.astimezone(dt.UTC).date() if since else dt.date.min
    last = until.astimezone(dt.UTC).date() if until else dt.date.max
    days = []
    for entry in root.iterdir():
        try:
            day = dt.date.fromisoformat(entry.name)
        except ValueError:
            continue  # not a day folder
        if entry.is_dir() and first <= day <= last:
            days.append(entry)
    return sorted(days)


def read_audit_file(path: Path) -> Iterator[AuditRecord]:
    """The records of one writer file; lines that are not records are skipped with a
    warning (a torn last line is what a writer killed mid-write leaves)."""
    data = path.read_bytes()
    lines = data.split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield AuditRecord.model_validate_json(line)
        except ValidationError as e:
            if number == len(lines):  # no newline after it: its write never finished
                log.warning("%s:%d: torn last line skipped (its writer stopped mid-write)",
                            path, number)
            else:
                log.warning("%s:%d: not an audit record, skipped: %s", path, number,
                            e.errors()[0]["msg"])


def _matches(r: AuditRecord, since: dt.datetime | None, until: dt.datetime | None,
             wanted: dict[str, str | None]) -> bool:
    if (since and r.time < since) or (until and r.time > until):
        return False
    return all(v is None or getattr(r, k) == v for k, v in wanted.items())


def query_audit(root_dir: str | Path, *, since: dt.datetime | None = None,
                until: dt.datetime | None = None, client: str | None = None,
                model_version: str | None = None, model: str | None = None,
                outcome: str | None = None, limit: int | None = None) -> list[AuditRecord]:
    """Records of every writer from ``since`` to ``until`` (both inclusive; naive = UTC)
    that match every filter given, oldest first. ``limit``: only the most recent N."""
    root = _local_root(root_dir)
    if not root.is_dir():
        raise StorageError(f"no audit folder at {root}: check --dir or ${AUDIT_ENV}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit is {limit}: expected a positive number of records")
    since, until = _as_utc(since), _as_utc(until)
    wanted = {"client": client, "model_version": model_version, "model": model,
              "outcome": outcome}
    found = [r for day in _day_dirs(root, since, until) for path in sorted(day.glob(f"*{SUFFIX}"))
             for r in read_audit_file(path) if _matches(r, since, until, wanted)]
    found.sort(key=lambda r: (r.time, r.writer))  # stable: a writer's own order is kept
    return found[-limit:] if limit else found


# --------------------------------------------------------------------------- the CLI's side


def parse_time(text: str, *, now: dt.datetime | None = None) -> dt.datetime:
    """``--since`` / ``--until``: ISO-8601 (naive = UTC) or an age such as 15m, 2h, 1d."""
    match = RELATIVE_RE.fullmatch(text.strip())
    if match:
        amount, unit = match.groups()
        return (now or utc_now()) - dt.timedelta(**{UNITS[unit]: float(amount)})
    try:
        t = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(f"time {text!r} is not valid: expected ISO-8601 (2026-05-01, "
                          "2026-05-01T12:00:00Z) or an age (30s, 15m, 2h, 1d, 1w)") from None
    return t if t.tzinfo else t.replace(tzinfo=dt.UTC)


COLUMNS = ("time", "client", "route", "status", "model@version", "n_patches", "latency_ms")


def table_rows(records: Iterable[AuditRecord]) -> list[tuple[str, ...]]:
    rows = []
    for r in records:
        model = f"{r.model}@{r.model_version}" if r.model else "-"
        rows.append((format_time(r.time), r.client or "-", r.route, str(r.status), model,
                     str(r.n_patches), f"{r.latency_ms:.1f}"))
    return rows


def format_table(records: Iterable[AuditRecord]) -> str:
    """Records as an aligned text table with a header line."""
    rows = [COLUMNS, *table_rows(records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    right = {"status", "n_patches", "latency_ms"}
    return "\n".join(
        "  ".join(cell.rjust(w) if name in right else cell.ljust(w)
                  for cell, w, name in zip(row, widths, COLUMNS)).rstrip()
        for row in rows)
