"""The on-disk outbox: every QoS1 message is written here BEFORE it is sent, deleted on PUBACK.

This is what makes "nothing lost" hold across broker outages and process restarts: the sender
replays rows in id order after every (re)connect, and a row goes away only when the broker has
acknowledged it. SQLite in WAL mode: readers never block the writer, and a crash loses at most the
transaction in flight (``synchronous=FULL`` also survives power loss, at one fsync per frame).

The outbox is bounded: when ``max_rows`` is reached the OLDEST rows are dropped and counted (a stale
result is worth less than a fresh one, and the disk must not fill).

The same database keeps each camera's frame-id high-water mark, so a restart never reuses an id.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

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
"""


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
        self.dropped = 0
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={synchronous}")
        self._db.executescript(_SCHEMA)
        self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def add(self, stream: str, topic: str, payload: bytes, qos: int = 1) -> int:
        """Append one message durably; returns its row id. Drops the oldest rows when full."""
        return self.add_many(stream, [(topic, payload, qos)])[0]

    def add_many(self, stream: str, messages: list[tuple[str, bytes, int]]) -> list[int]:
        """Append messages in one transaction (a result and its heatmap land together or not at all)."""
        now = time.time()
        with self._lock:
            ids: list[int] = []
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for topic, payload, qos in messages:
                    cur = self._db.execute(
                        "INSERT INTO outbox (stream, topic, payload, qos, created) VALUES (?, ?, ?, ?, ?)",
                        (stream, topic, sqlite3.Binary(payload), qos, now),
                    )
                    ids.append(int(cur.lastrowid or 0))
                self._count += len(messages)
                excess = self._count - self.max_rows
                if excess > 0:
                    cur = self._db.execute(
                        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                        (excess,),
                    )
                    self._count -= cur.rowcount
                    self.dropped += cur.rowcount
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
                raise
            return ids

    def peek(self, stream: str, after_id: int = 0, limit: int = 100) -> list[Row]:
        """Up to ``limit`` rows of ``stream`` with id > ``after_id``, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, stream, topic, payload, qos, created FROM outbox "
                "WHERE stream = ? AND id > ? ORDER BY id LIMIT ?",
                (stream, after_id, limit),
            ).fetchall()
        return [Row(r[0], r[1], r[2], bytes(r[3]), r[4], r[5]) for r in rows]

    def ack(self, row_id: int) -> bool:
        """The broker has the message: forget it. False when it was already gone (dropped or acked)."""
        with self._lock:
            cur = self._db.execute("DELETE FROM outbox WHERE id = ?", (row_id,))
            self._count -= cur.rowcount
            return cur.rowcount > 0

    def depth(self, stream: str | None = None) -> int:
        with self._lock:
            if stream is None:
                return self._count
            return self._db.execute("SELECT COUNT(*) FROM outbox WHERE stream = ?", (stream,)).fetchone()[0]

    def reserve_frame_ids(self, camera: str, block: int) -> int:
        """Reserve ``block`` ids for ``camera``; returns the first. Restarts skip, never reuse, ids."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
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
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
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
