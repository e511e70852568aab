"""One MQTT connection per camera: delivery of the outbox in order, status, commands, reconnects.

Why one connection per camera: a connection has exactly one Last Will, and DESIGN.md wants the
retained offline status on each camera's own ``<root>/status``.

Why the I/O loop is ours (paho's documented external-loop API: ``socket``, ``loop_read``,
``loop_write``, ``loop_misc``) and why a fresh paho client is made for each connection: paho keeps
unacknowledged messages in memory and re-sends them on reconnect from its own thread, racing with
new publishes, which breaks ordering. Here one thread owns the connection and the outbox cursor: on
every (re)connect it replays the outbox from its oldest unacknowledged row, strictly in row order,
and deletes a row only on its PUBACK. A wake pipe lets other threads hand work over without polling.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edge.config import MqttConfig
from edge.outbox import Outbox
from edge.payloads import dumps

log = logging.getLogger(__name__)

CONTROL_LIMIT = 256  # in-memory messages (status, responses, metrics) held while disconnected


@dataclass
class Control:
    """A message that does not go through the outbox (status, metrics, command responses)."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: Properties | None = None


@dataclass
class LinkStats:
    connects: int = 0
    reconnects: int = 0
    connect_failures: int = 0
    delivered: int = 0
    rejected: int = 0
    control_dropped: int = 0


class MqttLink:
    """Owns one broker connection for one camera and drains that camera's outbox stream."""

    def __init__(
        self,
        cfg: MqttConfig,
        camera: str,
        root: str,
        outbox: Outbox,
        status: Callable[[str], dict[str, Any]],
        on_command: Callable[[str, bytes, Any], None] | None = None,
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        """``status(state)`` builds the status payload for "online"/"offline" at the time it is sent."""
        self.cfg, self.camera, self.root, self.outbox = cfg, camera, root, outbox
        self._status, self._on_command, self._on_delivered = status, on_command, on_delivered
        self.stats = LinkStats()
        self.connected = threading.Event()
        self._control: deque[Control] = deque()
        self._control_lock = threading.Lock()
        self._wake_lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._stop_deadline: float | None = None
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{camera}", daemon=True)
        self._inflight: dict[int, int] = {}  # mid -> outbox row id
        self._cursor = 0
        self._connack: bool | None = None
        self._status_dirty = False
        self._offline_acked = threading.Event()
        self._offline_mid: int | None = None
        base = cfg.client_id or f"linewatch-edge-{socket.gethostname()}"
        self.client_id = f"{base}-{camera}"

    # ----- API for other threads -------------------------------------------------------------
    @property
    def status_topic(self) -> str:
        return f"{self.root}/status"

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        """New outbox rows or control messages: interrupt the I/O wait."""
        with self._wake_lock:
            if self._wake_w < 0:
                return  # the link has ended; never write to a recycled descriptor
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._wake_w, b"x")

    def send(
        self,
        topic: str,
        payload: bytes,
        qos: int = 0,
        retain: bool = False,
        properties: Properties | None = None,
    ) -> None:
        """Queue a non-outbox message. While disconnected, at most CONTROL_LIMIT are kept (oldest go)."""
        with self._control_lock:
            if len(self._control) >= CONTROL_LIMIT:
                self._control.popleft()
                self.stats.control_dropped += 1
            self._control.append(Control(topic, payload, qos, retain, properties))
        self.wake()

    def publish_status(self) -> None:
        """Re-publish the retained status (model swapped, reload failed, threshold changed)."""
        self._status_dirty = True
        self.wake()

    def stop(self, drain_timeout: float = 10.0) -> None:
        """Deliver what is pending (up to ``drain_timeout``), publish offline status, disconnect."""
        self._stop_deadline = time.monotonic() + drain_timeout
        self.wake()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # ----- the connection thread ---------------------------------------------------------------
    def _make_client(self) -> paho.Client:
        cfg = self.cfg
        protocol = paho.MQTTv5 if cfg.protocol == "5" else paho.MQTTv311
        kwargs: dict[str, Any] = {"client_id": self.client_id, "protocol": protocol}
        if protocol == paho.MQTTv311:
            kwargs["clean_session"] = True
        client = paho.Client(CallbackAPIVersion.VERSION2, **kwargs)
        client.enable_logger(logging.getLogger("paho"))
        if cfg.use_tls:
            client.tls_set(
                ca_certs=str(cfg.tls.ca) if cfg.tls.ca else None,
                certfile=str(cfg.tls.cert) if cfg.tls.cert else None,
                keyfile=str(cfg.tls.key) if cfg.tls.key else None,
                cert_reqs=ssl.CERT_REQUIRED,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
            client.tls_insecure_set(cfg.tls.insecure)
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.resolved_password())
        client.will_set(self.status_topic, dumps(self._status("offline")), qos=1, retain=True)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connack = not reason.is_failure
        if reason.is_failure:
            log.error("broker refused connection", extra={"camera": self.camera, "reason": str(reason)})

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid == self._offline_mid:
            self._offline_acked.set()
        row_id = self._inflight.pop(mid, None)
        if row_id is None:
            return
        if reason is not None and getattr(reason, "is_failure", False):
            self.stats.rejected += 1
            log.error(
                "broker rejected a message; dropped", extra={"camera": self.camera, "reason": str(reason)}
            )
        self.outbox.ack(row_id)
        self.stats.delivered += 1
        if self._on_delivered is not None:
            self._on_delivered(row_id)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        prefix = f"{self.root}/cmd/"
        if not message.topic.startswith(prefix) or self._on_command is None:
            return
        try:
            self._on_command(message.topic[len(prefix) :], bytes(message.payload), message.properties)
        except Exception:
            log.exception("command handler failed", extra={"camera": self.camera})

    def _run(self) -> None:
        backoff = self.cfg.reconnect_min_s
        while self._stop_deadline is None:
            try:
                connected = self._session()
            except Exception:  # never let the camera's only connection thread die
                log.exception("MQTT session failed", extra={"camera": self.camera})
                connected = False
            if connected:
                backoff = self.cfg.reconnect_min_s
            if self._stop_deadline is not None:
                break
            self.stats.connect_failures += 1
            self._sleep(backoff)
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    def _sleep(self, seconds: float) -> None:
        """Interruptible by stop() through the wake pipe."""
        try:
            select.select([self._wake_r], [], [], seconds)
        except (OSError, ValueError):
            time.sleep(seconds)

    def _session(self) -> bool:
        """One connection, from CONNECT to loss or stop. True when it got connected."""
        client = self._make_client()
        self._connack = None
        try:
            if self.cfg.protocol == "5":
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True)
            else:
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            log.warning("broker unreachable", extra={"camera": self.camera, "error": str(exc)})
            return False
        try:
            deadline = time.monotonic() + self.cfg.connect_timeout_s
            while self._connack is None and time.monotonic() < deadline and self._stop_deadline is None:
                if not self._io(client, 0.2):
                    break
            if not self._connack:
                return False
            self._connected(client)
            while True:
                if self._stop_deadline is not None and (
                    self._drained() or time.monotonic() > self._stop_deadline
                ):
                    self._goodbye(client)
                    return True
                self._pump(client)
                if not self._io(client, 1.0):
                    log.warning("broker connection lost", extra={"camera": self.camera})
                    return True
        finally:
            self.connected.clear()
            self._inflight.clear()
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _connected(self, client: paho.Client) -> None:
        if self.stats.connects:
            self.stats.reconnects += 1
        self.stats.connects += 1
        self._cursor = 0  # replay every unacknowledged row, in order
        self._inflight.clear()
        log.info("broker connected", extra={"camera": self.camera, "client_id": self.client_id})
        client.subscribe(f"{self.root}/cmd/+", qos=1)
        self._status_dirty = True
        self.connected.set()

    def _drained(self) -> bool:
        return not self._inflight and not self._control and self.outbox.depth(self.camera) == 0

    def _pump(self, client: paho.Client) -> None:
        """Hand over status, control messages and the next outbox rows (up to the in-flight window)."""
        if self._status_dirty:
            self._status_dirty = False
            client.publish(self.status_topic, dumps(self._status("online")), qos=1, retain=True)
        while True:
            with self._control_lock:
                if not self._control:
                    break
                msg = self._control.popleft()
            client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=msg.properties)
        room = self.cfg.inflight_window - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.peek(self.camera, self._cursor, room):
            info = client.publish(row.topic, row.payload, qos=row.qos)
            self._cursor = row.id
            if row.qos == 0:
                self.outbox.ack(row.id)
            else:
                self._inflight[info.mid] = row.id

    def _io(self, client: paho.Client, timeout: float) -> bool:
        """One round of the external paho loop; False when the connection is gone."""
        sock = client.socket()
        if sock is None:
            return False
        pending = sock.pending() if hasattr(sock, "pending") else 0
        wlist = [sock] if client.want_write() else []
        try:
            readable, writable, _ = select.select([sock, self._wake_r], wlist, [], 0 if pending else timeout)
        except (OSError, ValueError, TypeError):
            return False
        if self._wake_r in readable:
            try:
                while os.read(self._wake_r, 4096):
                    pass
            except (BlockingIOError, OSError):
                pass
        if (sock in readable or pending) and client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        if client.socket() is None:
            return False
        if (writable or client.want_write()) and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        return client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _goodbye(self, client: paho.Client) -> None:
        """Clean shutdown: retained offline status (acknowledged), then DISCONNECT (no Last Will)."""
        self._offline_acked.clear()
        info = client.publish(self.status_topic, dumps(self._status("offline")), qos=1, retain=True)
        self._offline_mid = info.mid
        deadline = time.monotonic() + 3.0
        while not self._offline_acked.is_set() and time.monotonic() < deadline:
            if not self._io(client, 0.1):
                return
        client.disconnect()
        for _ in range(10):
            if client.socket() is None or not client.want_write():
                break
            self._io(client, 0.05)


def response_properties(request: Any) -> tuple[str | None, Properties | None]:
    """MQTT 5: the request's response topic and a properties object carrying its correlation data."""
    topic = getattr(request, "ResponseTopic", None) if request is not None else None
    if not topic:
        return None, None
    props = Properties(PacketTypes.PUBLISH)
    data = getattr(request, "CorrelationData", None)
    if data:
        props.CorrelationData = data
    return topic, props
