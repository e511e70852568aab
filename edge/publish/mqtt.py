"""One MQTT connection per camera: delivery of the outbox in order, status, commands, reconnects.

Why one connection per camera: a connection has exactly one Last Will, and DESIGN.md wants the
retained offline status on each camera's own ``<root>/status``.

Why the I/O loop is ours (paho's documented external-loop API: ``socket``, ``loop_read``,
``loop_write``, ``loop_misc``) and why a fresh paho client is made for each connection: paho keeps
unacknowledged messages in memory and re-sends them on reconnect from its own thread, racing with
new publishes, which breaks ordering. Here one thread owns the connection and the outbox cursor: on
every (re)connect it replays the outbox from its oldest unacknowledged row, strictly in row order,
and deletes a row only on its PUBACK. A wake pipe lets other threads hand work over without polling.

Why reconnects wait on a stop Event and not on the wake pipe (issue 17): every new result writes to
the pipe, so a backoff that waited on it returned at once as soon as one byte was pending and the
loop spun, thousands of connects and log lines a second. The backoff is exponential with jitter
(``reconnect_min_s`` doubling up to ``reconnect_max_s``; jitter so that many boxes do not reconnect in
step after a broker restart), is cut short only by ``stop()``, and resets only after a connection
stayed up ``STABLE_S``, so a broker that accepts and drops at once is backed off too. Repeated
failures are logged through ``edge.observability.logs.RepeatLimiter``: the first, then one summary per period.

Why the link checks liveness itself: a network that drops packets without refusing them (a cable
pulled behind a switch, a firewall dropping a state) leaves the TCP socket open and silent. paho sends
a PINGREQ after ``keepalive_s`` of silence but only gives up a whole keepalive later; the link gives
up when the broker has stayed silent half a keepalive after that ping, so a black hole is noticed
within 1.5 keepalives (plus one I/O tick), then it reconnects with backoff.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
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

from linewatch.edge.config import MqttConfig
from linewatch.edge.observability.logs import RepeatLimiter, install_repeat_filter
from linewatch.edge.publish.outbox import Outbox, Row
from linewatch.edge.publish.payloads import dumps

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

CONTROL_LIMIT = 256  # in-memory messages (status, responses, metrics) held while disconnected
STABLE_S = 5.0  # a connection that lasted this long resets the reconnect backoff


def backoff_delay(attempt: int, low: float, high: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based): low*2^attempt capped at high, of which
    the upper half is random ("equal jitter": never less than half the nominal wait)."""
    nominal = min(high, low * 2 ** min(attempt, 40))
    return nominal / 2 + (rng or random).uniform(0, nominal / 2)


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
    connect_failures: int = 0  # attempts that never got a CONNACK (every one counted, even when not logged)
    disconnects: int = 0  # established connections lost (broker gone, network silent, keepalive)
    keepalive_timeouts: int = 0  # of which: the broker stayed silent past the keepalive
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
        self._stopping = threading.Event()  # what the reconnect backoff waits on (not the wake pipe)
        self._rng = random.Random()
        self._last_in = 0.0  # monotonic time bytes last came from the broker
        self._quiet_since: float | None = None  # when silence first reached the keepalive
        self._failures_at_connect = 0
        self._thread = threading.Thread(target=self._run, name=f"mqtt-{camera}", daemon=True)
        self._inflight: dict[int, int] = {}  # mid -> outbox row id
        self._cursor = 0
        self._connack: bool | None = None
        self._status_dirty = False
        self._offline_acked = threading.Event()
        self._offline_mid: int | None = None
        base = cfg.client_id or f"linewatch-edge-{socket.gethostname()}"
        self.client_id = f"{base}-{camera}"
        self.streams = [camera]  # outbox streams this link delivers (row ids are global, so one cursor)

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
        self._stopping.set()
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
        paho_log = logging.getLogger(f"paho.{self.camera}")
        install_repeat_filter(paho_log)  # paho logs every failed socket read at ERROR
        client.enable_logger(paho_log)
        client.connect_timeout = cfg.connect_timeout_s
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
        self._set_will(client)
        client.on_connect = self._on_connect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # ----- what a payload mode changes (edge/publish/sparkplug/link.py overrides these) --------------
    def _set_will(self, client: paho.Client) -> None:
        """The Last Will of the next connection: the retained offline status."""
        client.will_set(self.status_topic, dumps(self._status("offline")), qos=1, retain=True)

    def _on_session(self, client: paho.Client) -> None:
        """Just connected: subscribe to the commands, publish the online status first."""
        client.subscribe(f"{self.root}/cmd/+", qos=1)
        self._status_dirty = True

    def _pump_first(self, client: paho.Client) -> None:
        """Before control messages and rows in every pump round: the status, when it changed."""
        if self._status_dirty:
            self._status_dirty = False
            client.publish(self.status_topic, dumps(self._status("online")), qos=1, retain=True)

    def _publish_row(self, client: paho.Client, row: Row) -> paho.MQTTMessageInfo:
        return client.publish(row.topic, row.payload, qos=row.qos)

    def _farewell(self, client: paho.Client) -> int:
        """Clean shutdown: the message that says so (acknowledged before DISCONNECT); returns its mid."""
        return client.publish(self.status_topic, dumps(self._status("offline")), qos=1, retain=True).mid

    def _route(self, message: paho.MQTTMessage) -> None:
        prefix = f"{self.root}/cmd/"
        if not message.topic.startswith(prefix) or self._on_command is None:
            return
        self._on_command(message.topic[len(prefix) :], bytes(message.payload), message.properties)

    # ----- paho callbacks ----------------------------------------------------------------------------
    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connack = not reason.is_failure
        if reason.is_failure:
            limited.error("broker refused connection", self.camera, camera=self.camera, reason=str(reason))

    def _on_publish(self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        if mid == self._offline_mid:
            self._offline_acked.set()
        row_id = self._inflight.pop(mid, None)
        if row_id is None:
            return
        if reason is not None and getattr(reason, "is_failure", False):
            self.stats.rejected += 1
            limited.error(
                "broker rejected a message; dropped", self.camera, camera=self.camera, reason=str(reason)
            )
        self.outbox.ack(row_id)
        self.stats.delivered += 1
        if self._on_delivered is not None:
            self._on_delivered(row_id)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        try:
            self._route(message)
        except Exception:
            limited.log(logging.ERROR, "command handler failed", self.camera, {"camera": self.camera}, True)

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                up_s = self._session()
            except Exception:  # never let the camera's only connection thread die
                limited.log(logging.ERROR, "MQTT session failed", self.camera, {"camera": self.camera}, True)
                up_s = None
            if self._stopping.is_set():
                break
            if up_s is None:
                self.stats.connect_failures += 1
            else:
                self.stats.disconnects += 1
                if up_s >= STABLE_S:
                    attempt = 0
            self._stopping.wait(
                backoff_delay(attempt, self.cfg.reconnect_min_s, self.cfg.reconnect_max_s, self._rng)
            )
            attempt += 1
        with self._wake_lock:
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_w = -1

    def _session(self) -> float | None:
        """One connection, from CONNECT to loss or stop: seconds it was up, None when it never was."""
        client = self._make_client()
        self._connack = None
        try:
            if self.cfg.protocol == "5":
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s, clean_start=True)
            else:
                client.connect(self.cfg.host, self.cfg.port, self.cfg.keepalive_s)
        except (OSError, ssl.SSLError, ValueError) as exc:
            limited.warning("broker unreachable", self.camera, camera=self.camera, error=str(exc))
            return None
        tick = min(1.0, self.cfg.keepalive_s / 10)
        try:
            deadline = time.monotonic() + self.cfg.connect_timeout_s
            while self._connack is None and time.monotonic() < deadline and self._stop_deadline is None:
                if not self._io(client, 0.2):
                    break
            if not self._connack:
                if self._connack is None and self._stop_deadline is None:
                    limited.warning("broker did not answer CONNECT", self.camera, camera=self.camera)
                return None
            self._connected(client)
            since = time.monotonic()
            while True:
                if self._stop_deadline is not None and (
                    self._drained() or time.monotonic() > self._stop_deadline
                ):
                    self._goodbye(client)
                    return time.monotonic() - since
                self._pump(client)
                if not self._io(client, tick):
                    limited.warning("broker connection lost", self.camera, camera=self.camera)
                    return time.monotonic() - since
                if self._silent_too_long():
                    self.stats.keepalive_timeouts += 1
                    limited.warning(
                        "broker connection lost",
                        self.camera,
                        camera=self.camera,
                        reason=f"no packet from the broker for {time.monotonic() - self._last_in:.1f} s "
                        f"(keepalive {self.cfg.keepalive_s} s)",
                    )
                    return time.monotonic() - since
        finally:
            self.connected.clear()
            self._inflight.clear()
            sock = client.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()

    def _silent_too_long(self) -> bool:
        """The broker stayed silent half a keepalive after paho's PINGREQ (sent at a keepalive of silence)."""
        now = time.monotonic()
        keepalive = self.cfg.keepalive_s
        if now - self._last_in < keepalive:
            self._quiet_since = None
            return False
        if self._quiet_since is None:
            self._quiet_since = now  # paho sends its PINGREQ in this same round; give it time to answer
            return False
        return now - self._quiet_since >= keepalive / 2

    def _connected(self, client: paho.Client) -> None:
        if self.stats.connects:
            self.stats.reconnects += 1
        self.stats.connects += 1
        self._cursor = 0  # replay every unacknowledged row, in order
        self._inflight.clear()
        self._last_in, self._quiet_since = time.monotonic(), None
        limited.flush(self.camera, camera=self.camera)
        limited.info(
            "broker connected",
            self.camera,
            camera=self.camera,
            client_id=self.client_id,
            failed_attempts=self.stats.connect_failures - self._failures_at_connect,
        )
        self._failures_at_connect = self.stats.connect_failures
        self._on_session(client)
        self.connected.set()

    def _drained(self) -> bool:
        return (
            not self._inflight and not self._control and sum(self.outbox.depth(s) for s in self.streams) == 0
        )

    def _pump(self, client: paho.Client) -> None:
        """Hand over status, control messages and the next outbox rows (up to the in-flight window)."""
        self._pump_first(client)
        while True:
            with self._control_lock:
                if not self._control:
                    break
                msg = self._control.popleft()
            client.publish(msg.topic, msg.payload, qos=msg.qos, retain=msg.retain, properties=msg.properties)
        room = self.cfg.inflight_window - len(self._inflight)
        if room <= 0:
            return
        for row in self.outbox.peek_streams(self.streams, self._cursor, room):
            info = self._publish_row(client, row)
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
        if sock in readable or pending:
            if client.loop_read() != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return False
            self._last_in = time.monotonic()
        if client.socket() is None:
            return False
        if (writable or client.want_write()) and client.loop_write() != MQTTErrorCode.MQTT_ERR_SUCCESS:
            return False
        return client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS

    def _goodbye(self, client: paho.Client) -> None:
        """Clean shutdown: retained offline status (acknowledged), then DISCONNECT (no Last Will)."""
        self._offline_acked.clear()
        self._offline_mid = self._farewell(client)
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
