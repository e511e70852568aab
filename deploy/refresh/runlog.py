"""The refresh log: one JSON line per run, appended, never rewritten.

JSON Lines so that `tail -n1`, `jq` and a dashboard can all read it, and appended
with O_APPEND + fsync so that concurrent writers (a manual rollback during a nightly
run) never interleave inside a line and a power cut loses at most the line in flight.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

__all__ = ["RunRecord", "append_record", "read_records", "utc_now"]


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class RunRecord:
    """What one invocation did. `outcome` is one of the names in `deploy.refresh.codes`."""

    command: str
    run_id: str
    started: str = field(default_factory=utc_now)
    finished: str | None = None
    outcome: str = "running"
    exit_code: int | None = None
    versions: dict[str, Any] = field(default_factory=dict)  # before / after / live
    drop: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)  # before / after per task
    gate: dict[str, Any] | None = None
    confirm: dict[str, Any] | None = None
    timings_s: dict[str, float] = field(default_factory=dict)
    message: str = ""
    host: str = field(default_factory=lambda: os.uname().nodename)

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        """Record the wall time of one step, also when it fails."""
        start = time.monotonic()
        try:
            yield
        finally:
            self.timings_s[step] = round(time.monotonic() - start, 3)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items()}


def append_record(path: Path, record: RunRecord | dict[str, Any]) -> None:
    """Append one line; a single write() of the whole line, so lines never interleave."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = record.to_json() if isinstance(record, RunRecord) else record
    line = (json.dumps(doc, sort_keys=True, default=str) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_records(path: Path, last: int | None = None) -> list[dict[str, Any]]:
    """Parsed lines, oldest first; a torn last line (power cut) is skipped, not fatal."""
    path = Path(path)
    if not path.is_file():
        return []
    lines = path.read_text(errors="replace").splitlines()
    if last is not None:
        lines = lines[-last:]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out
