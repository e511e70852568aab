"""Outbox: ordered, durable, deleted only on ack, bounded with the oldest dropped and counted."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from linewatch.edge.publish.outbox import FrameIds, Outbox


def test_order_ack_and_streams(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.add("a", "t/result", f"{i}".encode()) for i in range(5)]
    box.add("b", "u/result", b"x")
    rows = box.peek("a", 0, 10)
    assert [r.payload for r in rows] == [b"0", b"1", b"2", b"3", b"4"]
    assert [r.id for r in box.peek("a", ids[1], 2)] == ids[2:4]
    assert box.ack(ids[0]) and not box.ack(ids[0])
    assert box.depth("a") == 4 and box.depth("b") == 1 and box.depth() == 5


def test_survives_restart(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    box.add_many("a", [("t/result", b"r", 1), ("t/heatmap", b"\xff\xd8jpeg", 1)])
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    rows = again.peek("a")
    assert [r.topic for r in rows] == ["t/result", "t/heatmap"] and rows[1].payload == b"\xff\xd8jpeg"
    assert again.depth() == 2


def test_bounded_drops_oldest(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite", max_rows=10)
    for i in range(25):
        box.add("a", "t", str(i).encode())
    assert box.depth() == 10 and box.dropped == 15
    assert [int(r.payload) for r in box.peek("a", 0, 100)] == list(range(15, 25))


def test_frame_ids_never_reused_across_restarts(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    ids = FrameIds(box, "cam0", block=10)
    first = [ids.next() for _ in range(12)]
    assert first == list(range(12))
    other = FrameIds(box, "cam1", block=10)
    assert other.next() == 0
    box.close()
    box2 = Outbox(tmp_path / "o.sqlite")
    again = FrameIds(box2, "cam0", block=10)
    nxt = again.next()
    assert nxt > max(first)


def test_full_disk_counts_and_recovers(tmp_path: Path, caplog: Any) -> None:
    """SQLITE_FULL (here from a page limit; the chaos suite fills a real tmpfs): counted, logged
    rate-limited, no exception to the caller, and writes work again once there is room."""
    box = Outbox(tmp_path / "o.sqlite")
    for i in range(5):
        box.add("a", "t", str(i).encode())
    pages = box._db.execute("PRAGMA page_count").fetchone()[0]
    box._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full now
    big = b"x" * 20_000
    caplog.set_level(logging.INFO, "linewatch.edge.publish.outbox")
    results = [box.add_many("a", [("t", big, 1), ("t/heatmap", big, 1)]) for _ in range(30)]
    assert results == [[]] * 30
    assert box.not_stored == 60 and box.write_errors == 30
    assert box.disk_full and not box.healthy and "full" in (box.last_error or "")
    assert box.depth() == 5 and [int(r.payload) for r in box.peek("a")] == list(range(5))
    failures = [r for r in caplog.records if r.getMessage().startswith("outbox write failed")]
    assert len(failures) == 1  # 30 failures, one line
    box._db.execute(f"PRAGMA max_page_count = {pages * 1000}")  # space is back
    assert box.add("a", "t", b"5") is not None
    assert box.healthy and not box.disk_full
    assert [int(r.payload) for r in box.peek("a")] == list(range(6))
    assert any(r.getMessage() == "outbox writable again" for r in caplog.records)


def test_source_mark_stored_with_the_verdict_and_only_forward(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    assert box.source_mark("cam0", "dir:/spool") is None
    box.add_many("cam0", [("t", b"r", 1)], mark=("dir:/spool", 200, "b.png"))
    assert box.source_mark("cam0", "dir:/spool") == (200, "b.png")
    box.add_many("cam0", [("t", b"r", 1)], mark=("dir:/spool", 100, "late.png"))  # older mtime
    assert box.mark("cam0", ("dir:/spool", 200, "a.png"))
    assert box.source_mark("cam0", "dir:/spool") == (200, "b.png")
    box.mark("cam0", ("dir:/spool", 300, "c.png"))
    assert box.source_mark("cam0", "dir:/spool") == (300, "c.png")
    assert box.source_mark("cam0", "dir:/elsewhere") is None  # a mark belongs to its folder
    box.mark("cam0", ("dir:/elsewhere", 5, "x.png"))
    assert box.source_mark("cam0", "dir:/elsewhere") == (5, "x.png")
    box.close()
    assert Outbox(tmp_path / "o.sqlite").source_mark("cam0", "dir:/elsewhere") == (5, "x.png")


def test_ack_that_cannot_delete_is_not_sent_again(tmp_path: Path) -> None:
    """A PUBACK whose DELETE fails (full disk) must not make the row go out again after a reconnect."""
    import sqlite3

    class DeletesFail:
        def __init__(self, db: sqlite3.Connection) -> None:
            self.db, self.failing = db, True

        def execute(self, sql: str, *args: Any) -> Any:
            if self.failing and sql.startswith("DELETE FROM outbox WHERE id = ?"):
                raise sqlite3.OperationalError("database or disk is full")
            return self.db.execute(sql, *args)

        def close(self) -> None:
            self.db.close()

    box = Outbox(tmp_path / "o.sqlite")
    ids = [box.add("a", "t", str(i).encode()) for i in range(3)]
    box._db = DeletesFail(box._db)  # type: ignore[assignment]
    assert box.ack(ids[0]) and not box.ack(ids[0])
    assert [int(r.payload) for r in box.peek("a")] == [1, 2] and box.depth() == box.depth("a") == 2
    box._db.failing = False  # type: ignore[attr-defined]
    box.add("a", "t", b"3")  # the next write deletes it for good
    box.close()
    again = Outbox(tmp_path / "o.sqlite")
    assert [int(r.payload) for r in again.peek("a")] == [1, 2, 3]
