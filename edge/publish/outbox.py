"""The on-disk outbox: every QoS1 message is written here BEFORE it is sent, deleted on PUBACK.

This is what makes "nothing lost" hold across broker outages and process restarts: the sender
replays rows in id order after every (re)connect, and a row goes away only when the broker has
acknowledged it. SQLite in WAL mode: readers never block the writer, and a crash loses at most the
transaction in flight (``synchronous=FULL`` also survives power loss, at one fsync per frame).

The outbox is bounded: when ``max_rows`` is reached the OLDEST rows are dropped and counted (a stale
result is worth less than a fresh one, and the disk must not fill).

The same database keeps each camera's frame-id high-water mark, so a restart never reuses an id, and
for ``dir:`` cameras the last image whose verdict is stored (its "mark", written in the same
transaction as the verdict), so a restart after a crash neither re-scores the folder (new ids for old
images: duplicates a subscriber cannot dedupe) nor skips an image whose verdict was never stored.

Why a failed write does not raise: the disk under the outbox can fill up (SQLITE_FULL) or fail, and the
line must keep scoring. ``add_many`` then counts the messages as not stored (``not_stored``, exported
on metrics and status), logs rate-limited, and returns no ids; the next write tries again, so the
outbox recovers by itself when space returns. An acknowledgement that cannot be deleted is remembered
in memory (never re-sent) and deleted on a later write.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from linewatch.edge.observability.logs import RepeatLimiter

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

SQLITE_FULL = 13

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    created REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_stream ON outbox (stream, id);
CREATE TABLE IF NOT EXISTS frame_ids (camera TEXT PRIMARY KEY, reserved INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS source_marks (
    stream TEXT PRIMARY KEY, uri TEXT NOT NULL, mtime_ns INTEGER NOT NULL, name TEXT NOT NULL
);
"""

Mark = tuple[str, int, str]  # a dir: source's image: (source URI, mtime_ns, file name)


class OutboxError(RuntimeError):
    """The outbox database could not do what was asked (disk full, I/O error); already counted."""


def is_disk_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code == SQLITE_FULL or (code is None and "full" in str(exc).lower())


@dataclass(frozen=True)
class Row:
    id: int
    stream: str
    topic: str
    payload: bytes
    qos: int
    created: float


class Outbox:
    """A bounded, ordered, durable queue of messages, one logical stream per camera."""

    def __init__(self, path: Path | str, max_rows: int = 100_000, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.max_rows = max_rows
        self.dropped = 0  # oldest rows dropped because max_rows was reached
        self.not_stored = 0  # messages that could not be written (disk full, I/O error): lost, counted
        self.write_errors = 0  # failed write transactions, of any kind
        self.disk_full = False  # the last write failed for lack of space
        self.last_error: str | None = None
        self._forgotten: dict[int, str] = {}  # acked rows whose DELETE failed: row id -> stream
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    @property
    def healthy(self) -> bool:
        """False while writes fail: verdicts are being lost (and counted)."""
        return self.last_error is None

    def add(self, stream: str, topic: str, payload: bytes, qos: int = 1) -> int | None:
        """Append one message durably; returns its row id, None when it could not be stored."""
        ids = self.add_many(stream, [(topic, payload, qos)])
        return ids[0] if ids else None

    def add_many(
        self, stream: str, messages: list[tuple[str, bytes, int]], mark: Mark | None = None
    ) -> list[int]:
        """Append messages in one transaction (a result and its heatmap land together or not at all).

        ``mark`` records, in the same transaction, the dir: image these messages are the verdict of.
        Drops the oldest rows when full. Returns the row ids, or [] when the write failed (counted in
        ``not_stored``, logged rate-limited): the caller goes on with the next frame.
        """
        now = time.time()
        with self._lock:
            ids: list[int] = []
            try:
                self._db.execute("BEGIN IMMEDIATE")
                forgotten = self._delete_forgotten()
                for topic, payload, qos in messages:
                    cur = self._db.execute(
                        "INSERT INTO outbox (stream, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                        (stream, topic, sqlite3.Binary(payload), qos, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                if mark is not None:
                    self._write_mark(stream, mark)
                excess = self._count - forgotten + len(messages) - self.max_rows
                dropped = 0
                if excess > 0:
                    cur = self._db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    dropped = cur.rowcount
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc, stream, len(messages))
                return []
            if forgotten:
                self._forgotten.clear()
            self._count += len(messages) - dropped - forgotten
            self.dropped += dropped
            if dropped:
                limited.warning(
                    "outbox full: oldest rows dropped",
                    None,
                    max_rows=self.max_rows,
                    dropped_total=self.dropped,
                )
            self._recovered()
            return ids

    def mark(self, stream: str, mark: Mark) -> bool:
        """Record a dir: image as done when it produced no message (publish mode 'anomalies')."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._write_mark(stream, mark)
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc, stream, 0)
                return False
            self._recovered()
            return True

    def source_mark(self, stream: str, uri: str) -> tuple[int, str] | None:
        """The last dir: image of ``uri`` whose verdict ``stream`` stored: (mtime_ns, name), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT mtime_ns, name FROM source_marks WHERE stream = ? AND uri = ?", (stream, uri)
            ).fetchone()
        return (int(row[0]), str(row[1])) if row else None

    def _write_mark(self, stream: str, mark: Mark) -> None:
        self._db.execute(
            "INSERT INTO source_marks (stream, uri, mtime_ns, name) VALUES (?, ?, ?, ?) ON CONFLICT(stream) "
            "DO UPDATE SET uri = excluded.uri, mtime_ns = excluded.mtime_ns, name = excluded.name "
            "WHERE excluded.uri != source_marks.uri "
            "OR (excluded.mtime_ns, excluded.name) > (source_marks.mtime_ns, source_marks.name)",
            (stream, *mark),
        )  # only forward: an image that arrived late with an older mtime does not move the mark back

    def _failed(self, exc: sqlite3.Error, stream: str, messages: int) -> None:
        """A write transaction failed: roll back, count, log (rate-limited). Caller holds the lock."""
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
        self.write_errors += 1
        self.not_stored += messages
        self.disk_full = is_disk_full(exc)
        self.last_error = ("disk full: " if self.disk_full else "") + str(exc)
        limited.error(
            "outbox write failed; verdict not stored" if messages else "outbox write failed",
            None,
            stream=stream,
            error=str(exc),
            disk_full=self.disk_full,
            not_stored_total=self.not_stored,
        )

    def _recovered(self) -> None:
        if self.last_error is None:
            return
        limited.flush(None)
        log.warning(
            "outbox writable again", extra={"not_stored_total": self.not_stored, "error": self.last_error}
        )
        self.last_error, self.disk_full = None, False

    def _delete_forgotten(self) -> int:
        """Delete the acknowledged rows whose delete failed earlier (inside the caller's transaction)."""
        if not self._forgotten:
            return 0
        ids = list(self._forgotten)
        cur = self._db.execute(f"DELETE FROM outbox WHERE id IN ({','.join('?' * len(ids))})", ids)
        return cur.rowcount

    def peek(self, stream: str, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Up to ``limit`` rows of ``stream`` with id > ``after_id``, oldest first (acked ones never)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, topic, payload, qos, created FROM outbox "
                "WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
                (stream, after_id, limit + len(self._forgotten)),
            ).fetchall()
            forgotten = set(self._forgotten)
        out = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows if r[0] not in forgotten]
        return out[:limit]

    def peek_streams(self, streams: list[str], after_id: int = 0, limit: int = 100) -> list[Row]:
        """``peek`` over several streams at once, in row order (one link delivering several cameras)."""
        if len(streams) == 1:
            return self.peek(streams[0], after_id, limit)
        marks = ",".join("?" * len(streams))
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, topic, payload, qos, created FROM outbox "
                f"WHERE stream IN ({marks}) AND id > ? ORDER BY id LIMIT ?",
                (*streams, after_id, limit + len(self._forgotten)),
            ).fetchall()
            forgotten = set(self._forgotten)
        out = [Row(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows if r[0] not in forgotten]
        return out[:limit]

    def ack(self, row_id: int) -> bool:
        """The broker has the message: forget it. False when it was already gone (dropped or acked)."""
        with self._lock:
            if row_id in self._forgotten:
                return False
            try:
                cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            except sqlite3.Error as exc:
                try:
                    row = self._db.execute("SELECT stream FROM outbox WHERE id = ?", (row_id,)).fetchone()
                except sqlite3.Error:
                    row = ("",)  # unknown stream: only the total depth accounts for it
                if row is None:
                    return False
                self._forgotten[row_id] = row[0]  # never re-sent; deleted on a later write
                limited.error(
                    "outbox delete failed; row kept in memory as acknowledged", None, error=str(exc)
                )
                return True
            self._count -= cur.rowcount
            return cur.rowcount > 0

    def depth(self, stream: str | None = None) -> int:
        with self._lock:
            if stream is None:
                return self._count - len(self._forgotten)
            n = self._db.execute("SELECT COUNT(*) FROM outbox WHERE stream = ?", (stream,)).fetchone()[0]
            return n - sum(1 for s in self._forgotten.values() if s == stream)

    def reserve_frame_ids(self, camera: str, block: int) -> int:
        """Reserve ``block`` ids for ``camera``; returns the first. Restarts skip, never reuse, ids.

        Raises OutboxError when the reservation cannot be stored: an id that is not persisted could be
        handed out again after a restart, so none is handed out.
        """
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                row = self._db.execute(
                    "SELECT reserved FROM frame_ids WHERE camera = ?", (camera,)
                ).fetchone()
                start = int(row[0]) if row else 0
                self._db.execute(
                    "INSERT INTO frame_ids (camera, reserved) VALUES (?, ?) "
                    "ON CONFLICT(camera) DO UPDATE SET reserved = excluded.reserved",
                    (camera, start + block),
                )
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._failed(exc, camera, 0)
                raise OutboxError(f"cannot reserve frame ids: {exc}") from exc
            self._recovered()
            return start

    def close(self) -> None:
        with self._lock:
            self._db.close()


class FrameIds:
    """Monotonic per-camera frame ids, persisted in blocks so a restart never reuses one.

    Ids are handed out at capture, so a dropped frame leaves a visible gap in the sequence.
    """

    def __init__(self, outbox: Outbox, camera: str, block: int = 1000) -> None:
        self._outbox, self._camera, self._block = outbox, camera, block
        self._next = self._limit = 0
        self._lock = threading.Lock()

    def next(self) -> int:
        with self._lock:
            if self._next >= self._limit:
                self._next = self._outbox.reserve_frame_ids(self._camera, self._block)
                self._limit = self._next + self._block
            value = self._next
            self._next += 1
            return value
