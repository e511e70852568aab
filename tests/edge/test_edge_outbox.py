"""Outbox: ordered, durable, deleted only on ack, bounded with the oldest dropped and counted."""

from __future__ import annotations

from pathlib import Path

from edge.outbox import FrameIds, Outbox


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
