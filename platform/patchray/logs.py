"""What a person sees on the terminal, and where everything else goes.

Library code logs through :mod:`logging` (logger ``patchray.*``) and never configures it;
the CLI does, with :class:`RunOutput`:

* patchray's own progress (stages, one line per epoch, results, where things are) goes to
  the terminal as ``[patchray] ...`` lines;
* everything else the process and its children write to stdout and stderr (Ray's start-up
  and worker logs, Ray Data progress bars, TensorFlow's C++ logs) goes to
  ``<run>/logs/patchray.log``, as does every patchray line, with timestamps.

The redirection is at the file-descriptor level because TensorFlow's C++ logging and Ray's
log forwarding write to fds 1 and 2 directly; Python's ``logging`` cannot catch them.

Ray workers are other processes: their progress reaches the driver through Ray's log
forwarding (worker stdout -> driver stdout -> the log file). :func:`worker_progress` marks a
line as patchray's, and :class:`RunOutput` echoes marked lines from the log file to the
terminal, so epoch lines from a Ray Train worker appear as the driver's own.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
import traceback
from pathlib import Path
from typing import IO, Any

MARKER = "[patchray] "
ANSI = re.compile(r"\x1b\[[0-9;]*m")
LOG_NAME = "patchray.log"
FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def worker_progress(message: str) -> None:
    """A progress line from a Ray worker process: printed with the marker so the CLI echoes
    it to the terminal (print, not logging: Ray forwards a worker's stdout to the driver)."""
    print(MARKER + message, flush=True)


class _TerminalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            text = f"{record.levelname.lower()}: {text}"
        return MARKER + text


class _PatchrayLogger:
    """Routes the ``patchray`` logger to ``handlers`` (not up to the root) until restored, so
    an in-process caller (tests) gets the logging setup it had back."""

    def __init__(self, handlers: list[logging.Handler]):
        self.logger = logging.getLogger("patchray")
        self.handlers = handlers
        self.saved = (self.logger.level, self.logger.propagate)
        self.logger.setLevel(logging.INFO)
        self.logger.propagate = False
        for h in handlers:
            self.logger.addHandler(h)

    def restore(self) -> None:
        for h in self.handlers:
            self.logger.removeHandler(h)
            h.close()
        self.logger.setLevel(self.saved[0])
        self.logger.propagate = self.saved[1]


def configure_terminal(verbose: bool = False, stream: IO[str] | None = None) -> _PatchrayLogger:
    """patchray's INFO lines to ``stream`` (stderr); other libraries' at WARNING (INFO with
    ``verbose``). For commands that start no Ray (ingest, dataset, models). ``restore()``
    the result when the command is done."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(_TerminalFormatter())
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format=FILE_FORMAT)
    return _PatchrayLogger([handler])


class RunOutput:
    """Context manager: the terminal shows patchray's lines; the rest goes to ``log_file``.

    With ``verbose`` nothing is redirected (everything on the terminal, as it comes); the
    patchray lines are still written to ``log_file``."""

    def __init__(self, log_file: Path, *, verbose: bool = False, poll_s: float = 0.2):
        self.log_file = Path(log_file)
        self.verbose = verbose
        self.poll_s = poll_s
        self._saved: list[int] = []
        self._terminal: IO[str] | None = None
        self._stop = threading.Event()
        self._echo: threading.Thread | None = None
        self._routing: _PatchrayLogger | None = None
        self._file_handler: logging.Handler | None = None
        self._root_level = logging.WARNING

    @property
    def terminal(self) -> IO[str]:
        """Where the person reads (stdout before the redirection)."""
        return self._terminal or sys.stdout

    def __enter__(self) -> RunOutput:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.log_file.touch()
        start = self.log_file.stat().st_size  # echo from here: earlier runs are not ours
        file_handler = logging.FileHandler(self.log_file)
        file_handler.setFormatter(logging.Formatter(FILE_FORMAT))
        if not self.verbose:
            sys.stdout.flush()
            sys.stderr.flush()
            self._saved = [os.dup(1), os.dup(2)]
            self._terminal = os.fdopen(os.dup(self._saved[0]), "w", buffering=1)
            fd = os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            os.close(fd)
        terminal_handler = logging.StreamHandler(self.terminal)
        terminal_handler.setFormatter(_TerminalFormatter())
        self._routing = _PatchrayLogger([terminal_handler, file_handler])
        # Other libraries' Python logging (Ray's, TensorFlow's) into the same file.
        root = logging.getLogger()
        self._root_level = root.level
        self._file_handler = file_handler
        root.addHandler(file_handler)
        root.setLevel(logging.INFO if self.verbose else logging.WARNING)
        if not self.verbose:
            self._echo = threading.Thread(target=self._echo_worker_lines, args=(start,),
                                          daemon=True, name="patchray-echo")
            self._echo.start()
        return self

    def _echo_worker_lines(self, start: int) -> None:
        """Tail the log file; copy worker progress lines (the marker not at line start: Ray
        prefixes forwarded lines with the actor's name) to the terminal."""
        with open(self.log_file, errors="replace") as f:
            f.seek(start)
            pending = ""
            while True:
                stopping = self._stop.is_set()
                chunk = f.read()
                pending += chunk
                *lines, pending = pending.split("\n")
                for line in lines:
                    line = ANSI.sub("", line)  # Ray colours the "(Actor pid=...)" prefix
                    at = line.find(MARKER)
                    if at > 0 and line[:at].rstrip().endswith(")"):
                        self.terminal.write(line[at:] + "\n")
                if stopping:
                    return
                if not chunk:
                    self._stop.wait(self.poll_s)

    def record_failure(self, error: BaseException) -> None:
        """Write ``error``'s traceback to the log file and tag the error with its path."""
        with open(self.log_file, "a") as f:
            f.write("".join(traceback.format_exception(error)))
        error.patchray_log = str(self.log_file)  # type: ignore[attr-defined]

    def __exit__(self, exc_type: Any, error: BaseException | None, tb: Any) -> None:
        if error is not None and not isinstance(error, KeyboardInterrupt):
            self.record_failure(error)
        if self._echo is not None:
            self._stop.set()
            self._echo.join(timeout=5)
        if self._file_handler is not None:
            root = logging.getLogger()
            root.removeHandler(self._file_handler)
            root.setLevel(self._root_level)
        if self._routing is not None:
            self._routing.restore()  # closes the terminal and file handlers
        if self._saved:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(self._saved[0], 1)
            os.dup2(self._saved[1], 2)
            for fd in self._saved:
                os.close(fd)
            self._saved = []
        if self._terminal is not None:
            self._terminal.close()
            self._terminal = None
