"""The one poller the tests share: wait for a condition instead of sleeping a fixed time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_for(
    predicate: Callable[[], bool], timeout: float = 60.0, interval: float = 0.05, what: str = ""
) -> None:
    """Poll until ``predicate()``; generous timeouts because CI machines are slow and loaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
