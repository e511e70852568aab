"""Fixtures of the edge tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from linewatch.edge.runtime import EdgeRuntime


@pytest.fixture
def runtime_factory() -> Iterator[Callable[..., EdgeRuntime]]:
    """Start EdgeRuntimes for a test and shut every one down after it, even when the test fails."""
    made: list[EdgeRuntime] = []

    def make(*args: Any, **kwargs: Any) -> EdgeRuntime:
        rt = EdgeRuntime(*args, **kwargs)
        made.append(rt)
        rt.start()
        return rt

    yield make
    for rt in made:
        rt.shutdown()
