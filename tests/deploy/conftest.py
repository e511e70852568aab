"""Fixtures for the deploy tests: a real mosquitto broker on a free loopback port."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from linewatch.deploy.localbroker import MOSQUITTO, LocalBroker


@pytest.fixture(scope="module")
def broker_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """Port of a plain, anonymous mosquitto on 127.0.0.1, one per test module."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (the Makefile's `mosquitto` target installs it)")
    with LocalBroker(tmp_path_factory.mktemp("mosquitto")) as broker:
        yield broker.port
