"""Fixtures for the deploy tests: a real mosquitto broker on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from refresh_testkit import MOSQUITTO, free_port, start_mosquitto, stop_process


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a plain, anonymous mosquitto on 127.0.0.1, one per test module."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (the Makefile's `mosquitto` target installs it)")
    port = free_port()
    workdir: Path = tmp_path_factory.mktemp("mosquitto")
    proc = start_mosquitto(f"listener {port} 127.0.0.1\nallow_anonymous true\n", workdir, port)
    try:
        yield port
    finally:
        stop_process(proc)
