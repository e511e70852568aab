"""Shared fixtures: a real mosquitto broker on a free loopback port, and MQTT recorders.

The broker can be stopped and restarted on the SAME port (``broker.restart()``), with persistence on
so that queued QoS1 messages for persistent subscribers survive the restart: that is what lets a
test prove that no result is lost while the broker is away.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from polling import wait_for

from linewatch.deploy.localbroker import MOSQUITTO, LocalBroker, free_port

# One kit for the tests, the demo and the benchmarks (deploy/localbroker.py); the names stay here too.
Broker = LocalBroker
__all__ = ["MOSQUITTO", "Broker", "Recorder", "free_port"]


@pytest.fixture
def mqtt_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """Factory for brokers with extra config (TLS, passwords); all are stopped at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make mosquitto installs it)")
    made: list[Broker] = []

    def make(extra: list[str] | None = None, anonymous: bool = True) -> Broker:
        broker = Broker(
            tmp_path_factory.mktemp("mosquitto"), extra=extra or (), anonymous=anonymous, persistence=True
        )
        broker.start()
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture
def mqtt_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A fresh mosquitto on a free loopback port; ``restart()`` keeps the port."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make mosquitto installs it)")
    broker = Broker(tmp_path_factory.mktemp("mosquitto"), persistence=True)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


class Recorder:
    """A persistent-session QoS1 subscriber that records every message, reconnecting on its own.

    The persistent session (clean_session=False, fixed client id) means messages published while it
    is reconnecting after a broker restart are queued for it by the broker, not lost.
    """

    def __init__(self, broker: Broker, topics: list[str], protocol: int | None = None) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        self.topics = topics
        self.subscribed = threading.Event()
        protocol = protocol or paho.MQTTv311
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"rec-{uuid.uuid4().hex[:10]}",
            clean_session=False if protocol == paho.MQTTv311 else None,
            protocol=protocol,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect(broker.host, broker.port, 30)
        self.client.loop_start()
        wait_for(self.subscribed.is_set, 30, what="recorder subscription")

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(t, 1) for t in self.topics])
        self.subscribed.set()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        with self._lock:
            self.messages.append((msg.topic, bytes(msg.payload), bool(msg.retain)))

    def on(self, suffix: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t.endswith(suffix)]

    def json(self, suffix: str) -> list[dict[str, Any]]:
        return [json.loads(p) for p in self.on(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def mqtt_recorder(mqtt_broker: Broker) -> Iterator[Callable[..., Recorder]]:
    """Factory: ``mqtt_recorder(["linewatch/#"])`` -> a Recorder subscribed on the test broker."""
    made: list[Recorder] = []

    def make(topics: list[str], protocol: int | None = None) -> Recorder:
        rec = Recorder(mqtt_broker, topics, protocol)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        with contextlib.suppress(Exception):
            rec.close()
