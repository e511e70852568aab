"""A bounded hand-off between two pipeline stages with an explicit policy when it is full.

``queue.Queue`` only blocks or raises; a live camera must never wait on a slow consumer (the frame
would be stale anyway), so the default for live sources is to drop the OLDEST item and count it.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
POLICIES = ("drop_oldest", "drop_newest", "block")


class Closed(Exception):
    """The queue was closed and is empty: the producer has finished."""


class BoundedQueue(Generic[T]):
    """Thread-safe bounded FIFO. ``put`` applies the full policy; drops are counted in ``dropped``."""

    def __init__(
        self,
        maxsize: int,
        policy: str = "drop_oldest",
        on_drop: Callable[[T], None] | None = None,
        signal: threading.Event | None = None,
    ) -> None:
        """``signal`` (shared by several queues) is set on every put, so one consumer can wait on many."""
        if maxsize < 1:
            raise ValueError("maxsize must be >= 1")
        if policy not in POLICIES:
            raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
        self.maxsize = maxsize
        self.policy = policy
        self.dropped = 0
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._on_drop = on_drop
        self._signal = signal

    def __len__(self) -> int:
        return len(self._items)

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, item: T, timeout: float | None = None) -> bool:
        """Enqueue; returns False when ``item`` (drop_newest, closed, block timeout) was not queued."""
        dropped: T | None = None
        with self._cond:
            if self._closed:
                return False
            if len(self._items) >= self.maxsize:
                if self.policy == "drop_newest":
                    self.dropped += 1
                    dropped = item
                elif self.policy == "drop_oldest":
                    self.dropped += 1
                    dropped = self._items.popleft()
                else:
                    deadline = None if timeout is None else time.monotonic() + timeout
                    while len(self._items) >= self.maxsize and not self._closed:
                        left = None if deadline is None else deadline - time.monotonic()
                        if left is not None and left <= 0:
                            return False
                        self._cond.wait(0.5 if left is None else min(left, 0.5))
                    if self._closed:
                        return False
            if dropped is not item:
                self._items.append(item)
                self._cond.notify_all()
                if self._signal is not None:
                    self._signal.set()
        if dropped is not None and self._on_drop is not None:
            self._on_drop(dropped)
        return dropped is not item

    def get(self, timeout: float | None = None) -> T | None:
        """Dequeue, waiting up to ``timeout``; None on timeout. Raises Closed once closed and drained."""
        with self._cond:
            deadline = None if timeout is None else time.monotonic() + timeout
            while not self._items:
                if self._closed:
                    raise Closed
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def get_nowait(self) -> T | None:
        with self._cond:
            if not self._items:
                return None
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def close(self) -> None:
        """No more puts; consumers drain what is left, then see Closed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if self._signal is not None:
            self._signal.set()
