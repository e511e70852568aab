"""Bounded queues: the full policy is explicit and every drop is counted."""

from __future__ import annotations

import threading

import pytest

from linewatch.edge.capture.queues import BoundedQueue, Closed


def test_drop_oldest_keeps_newest_and_counts() -> None:
    dropped: list[int] = []
    q: BoundedQueue[int] = BoundedQueue(3, "drop_oldest", on_drop=dropped.append)
    for i in range(5):
        assert q.put(i)
    assert [q.get_nowait() for _ in range(3)] == [2, 3, 4]
    assert q.dropped == 2 and dropped == [0, 1]


def test_drop_newest_refuses_incoming() -> None:
    q: BoundedQueue[int] = BoundedQueue(2, "drop_newest")
    assert q.put(0) and q.put(1)
    assert not q.put(2)
    assert q.dropped == 1 and [q.get_nowait(), q.get_nowait()] == [0, 1]


def test_block_waits_for_room() -> None:
    q: BoundedQueue[int] = BoundedQueue(1, "block")
    q.put(0)
    assert not q.put(1, timeout=0.05)
    done = threading.Event()

    def producer() -> None:
        q.put(2)
        done.set()

    t = threading.Thread(target=producer)
    t.start()
    assert q.get(timeout=5) == 0
    t.join(10)
    assert done.is_set() and q.get(timeout=5) == 2 and q.dropped == 0


def test_close_drains_then_raises_and_sets_signal() -> None:
    signal = threading.Event()
    q: BoundedQueue[int] = BoundedQueue(4, "block", signal=signal)
    q.put(7)
    assert signal.is_set()
    q.close()
    assert not q.put(8)
    assert q.get(timeout=1) == 7
    with pytest.raises(Closed):
        q.get(timeout=1)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        BoundedQueue(0)
    with pytest.raises(ValueError):
        BoundedQueue(1, "sometimes")
