"""Shared fixtures: a real mosquitto broker on a free loopback port, and MQTT recorders.

The broker can be stopped and restarted on the SAME port (``broker.restart()``), with persistence on
so that queued QoS1 messages for persistent subscribers survive the restart: that is what lets a
test prove that no result is lost while the broker is away.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from polling import wait_for

MOSQUITTO = shutil.which("mosquitto") or (
    "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None
)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port OUTSIDE the ephemeral range.

    While a broker is stopped for a restart test, clients keep reconnecting to its port; a port in
    the ephemeral range can then be taken as some outgoing connection's source port (even a TCP
    self-connection to 127.0.0.1:port), and the broker could not bind it again.
    """
    low, high = _ephemeral_range()
    candidates = [p for p in range(20000, 32000) if not low <= p <= high] or list(range(1025, low))
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for port in rng.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """A mosquitto process with its own config, persistence dir and log, on a fixed port."""

    def __init__(
        self, workdir: Path, port: int | None = None, extra: list[str] | None = None, anonymous: bool = True
    ) -> None:
        """``extra`` lines go right after the listener line (TLS files, password_file...)."""
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            *(extra or []),
            f"allow_anonymous {'true' if anonymous else 'false'}",
            "persistence true",
            f"persistence_location {workdir}/",
            "autosave_interval 1",
            "max_queued_messages 0",
            f"log_dest file {self.log}",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # keep access to the temp dirs instead of dropping to 'mosquitto'
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def _accepting(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def start(self) -> None:
        assert MOSQUITTO is not None
        deadline = time.monotonic() + 60
        while True:  # the port may linger briefly after a stop
            self.proc = subprocess.Popen(
                [MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
            )
            with contextlib.suppress(AssertionError):
                wait_for(
                    lambda: self._accepting() or self.proc.poll() is not None, 20, what="mosquitto to listen"
                )
            if self.proc.poll() is None and self._accepting():
                return
            if self.proc.poll() is None:  # alive but not listening: do not leak it
                self.proc.kill()
            self.proc.wait(10)
            if time.monotonic() > deadline:
                err = self.proc.stderr.read().decode() if self.proc.stderr else ""
                if self.log.exists():
                    err += "\n" + "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {err}")
            time.sleep(0.5)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then wait until the port is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None
        wait_for(lambda: not self._accepting(), 20, what="mosquitto to close its port")

    def restart(self, down_s: float = 0.0) -> None:
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@pytest.fixture
def mqtt_broker_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Broker]]:
    """Factory for brokers with extra config (TLS, passwords); all are stopped at teardown."""
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (make mosquitto installs it)")
    made: list[Broker] = []

    def make(extra: list[str] | None = None, anonymous: bool = True) -> Broker:
        broker = Broker(tmp_path_factory.mktemp("mosquitto"), extra=extra, anonymous=anonymous)
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
    broker = Broker(tmp_path_factory.mktemp("mosquitto"))
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
