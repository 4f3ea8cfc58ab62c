"""The ingest report: every input that did not become a record, and why.

Written beside the manifest as ``ingest_report.json`` (counts, rejected and ignored files)
and ``ingest_report.csv`` (``file,reason``, for a spreadsheet or ``grep``), so nothing an
ingest was given disappears without a line saying what happened to it.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from patchray import storage

REPORT_JSON = "ingest_report.json"
REPORT_CSV = "ingest_report.csv"


@dataclass
class IngestReport:
    """Counts and reasons collected while a source is ingested."""

    seen: int = 0  # image inputs considered (written + rejected)
    written: int = 0
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    ignored: list[str] = field(default_factory=list)  # not patches (README, .DS_Store, ...)

    def reject(self, file: str, reason: str) -> None:
        self.rejected.append((file, reason))

    def counts(self) -> dict[str, int]:
        return {
            "seen": self.seen,
            "written": self.written,
            "rejected": len(self.rejected),
            "ignored": len(self.ignored),
        }

    def to_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "rejected": [{"file": f, "reason": r} for f, r in self.rejected],
            "ignored": list(self.ignored),
        }

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["file", "reason"])
        writer.writerows(self.rejected)
        return buf.getvalue()

    def write(self, root: str) -> None:
        """Write both report files under ``root`` (before the manifest, which comes last)."""
        storage.write_json(storage.join(root, REPORT_JSON), self.to_json())
        storage.write_bytes(storage.join(root, REPORT_CSV), self.to_csv().encode())
