"""The one local-broker kit: ports outside the ephemeral range, and a restart on the same port."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from linewatch.deploy.localbroker import MOSQUITTO, LocalBroker, accepting, ephemeral_range, free_port


def test_free_ports_are_outside_the_ephemeral_range_and_bindable() -> None:
    low, high = ephemeral_range()
    for _ in range(20):
        port = free_port()
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (`make mosquitto`)")
def test_broker_restarts_on_its_port_and_stops_clean(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", persistence=True).start()
    try:
        port, first = broker.port, broker.pid
        assert broker.running and accepting(port) and broker.url == f"mqtt://127.0.0.1:{port}"
        assert "persistence true" in broker.config.read_text()
        broker.restart()
        assert broker.port == port and broker.pid != first and accepting(port)
    finally:
        broker.stop()
    assert not broker.running and not accepting(port)


@pytest.mark.skipif(MOSQUITTO is None, reason="mosquitto is not installed (`make mosquitto`)")
def test_a_broker_that_cannot_start_says_why(tmp_path: Path) -> None:
    broker = LocalBroker(tmp_path / "b", config="listener not-a-port\n")
    with pytest.raises(RuntimeError, match="did not start"):
        broker.start(timeout_s=2)
    assert not broker.running
