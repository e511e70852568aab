"""The MQTT connection of a Sparkplug B edge node: one for the box, carrying every camera (device).

It is ``edge.publish.mqtt.MqttLink`` (same reconnect backoff, liveness check, ordered outbox replay and
delete-on-PUBACK) with the Sparkplug session put in its hooks:

- the Last Will is the NDEATH, QoS 1, not retained, carrying the bdSeq of that CONNECT (bdSeq goes up
  by one on every CONNECT);
- on connect it subscribes to NCMD and DCMD, then publishes NBIRTH (seq 0) and a DBIRTH per camera
  before anything else, so a host always sees births before data;
- each outbox row (a DDATA without seq) gets the next seq when it is handed to the socket, and
  ``is_historical`` when it was written before this session started (store-and-forward replay);
- ``Node Control/Rebirth`` (NCMD) publishes the births again; requests that arrive while a rebirth
  is pending, or within ``rebirth_min_interval_s`` of the last births, are merged into one (counted):
  a host that sends a storm of rebirths gets births at a bounded rate, and nothing is lost;
- a clean stop publishes NDEATH itself (a clean DISCONNECT does not fire the Will).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable

import paho.mqtt.client as paho
from google.protobuf.message import DecodeError

from linewatch.edge.config import MqttConfig
from linewatch.edge.observability.logs import RepeatLimiter
from linewatch.edge.publish.mqtt import MqttLink
from linewatch.edge.publish.outbox import Outbox, Row
from linewatch.edge.publish.sparkplug.commands import CommandError, wants_rebirth
from linewatch.edge.publish.sparkplug.node import NAMESPACE, SparkplugNode

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)


class SparkplugLink(MqttLink):
    """The node's one connection; ``on_dcmd(device, raw)`` gets the DCMDs addressed to a camera."""

    def __init__(
        self,
        cfg: MqttConfig,
        node: SparkplugNode,
        outbox: Outbox,
        on_dcmd: Callable[[str, bytes], None],
        refresh: Callable[[], None],
        rebirth_min_interval_s: float = 1.0,
        on_delivered: Callable[[int], None] | None = None,
    ) -> None:
        """``refresh()`` updates the node's state metrics from the runtime (called before births)."""
        super().__init__(
            cfg,
            node.edge_node,
            node.topic("NCMD"),
            outbox,
            status=lambda state: {},
            on_delivered=on_delivered,
        )
        self.node, self._on_dcmd, self._refresh = node, on_dcmd, refresh
        self.streams = list(node.devices)
        self.rebirth_min_interval_s = rebirth_min_interval_s
        self.births_sent = 0  # rounds of NBIRTH + DBIRTHs
        self.rebirth_requests = 0
        self.rebirths_coalesced = 0
        self.bad_node_commands = 0
        self._births_due = False
        self._births_at = 0.0  # monotonic time of the last births
        self._session_wall = 0.0  # time.time() of this session's CONNECT: older rows are historical
        self._state_dirty = threading.Event()
        self._events: deque[tuple[str, str, object]] = deque(maxlen=64)

    # ----- API for other threads -----------------------------------------------------------------
    def publish_status(self) -> None:
        """The box's state changed (model, threshold, counters): send what changed, by exception."""
        self._state_dirty.set()
        self.wake()

    def send_event(self, device: str, name: str, value: object) -> str:
        """A one-off device metric (a snapshot JPEG); returns the topic it goes to."""
        topic = self.node.topic("DDATA", device)
        self._events.append((device, name, value))
        self.wake()
        return topic

    # ----- the Sparkplug session in MqttLink's hooks -------------------------------------------
    def _set_will(self, client: paho.Client) -> None:
        self.node.next_bdseq()
        client.will_set(self.node.topic("NDEATH"), self.node.ndeath(), qos=1, retain=False)

    def _on_session(self, client: paho.Client) -> None:
        client.subscribe([(self.node.topic("NCMD"), 1), (self.node.topic("DCMD", "+"), 1)])
        self._session_wall = time.time()
        self._births_due, self._births_at = True, float("-inf")  # births on connect are never deferred

    def _pump_first(self, client: paho.Client) -> None:
        if self._births_due and time.monotonic() - self._births_at >= self.rebirth_min_interval_s:
            self._births_due = False
            self._births_at = time.monotonic()
            self._refresh()
            for topic, payload in self.node.births():
                client.publish(topic, payload, qos=self.node.qos, retain=False)
            self.births_sent += 1
            self._state_dirty.clear()
        if self._births_due:
            return  # data keeps flowing; births follow when the interval has passed
        if self._state_dirty.is_set():
            self._state_dirty.clear()
            self._refresh()
            for device in [None, *self.node.devices]:
                kind = "NDATA" if device is None else "DDATA"
                payload = self.node.changed_state(device)
                if payload is not None:
                    client.publish(self.node.topic(kind, device), payload, qos=self.node.qos)
        while self._events:
            device, name, value = self._events.popleft()
            topic = self.node.topic("DDATA", device)
            client.publish(topic, self.node.event(device, name, value), qos=self.node.qos)

    def _publish_row(self, client: paho.Client, row: Row) -> paho.MQTTMessageInfo:
        if not row.topic.startswith(f"{NAMESPACE}/"):
            # written in JSON mode before a switch to Sparkplug: delivered as it was written
            return client.publish(row.topic, row.payload, qos=row.qos)
        try:
            payload = self.node.stamp(row.payload, historical=row.created < self._session_wall)
        except DecodeError as exc:  # cannot happen to rows this code wrote; never stall the outbox on one
            limited.error("outbox row is not a Sparkplug payload; sent as stored", "row", error=str(exc))
            payload = row.payload
        return client.publish(row.topic, payload, qos=row.qos)

    def _farewell(self, client: paho.Client) -> int:
        return client.publish(self.node.topic("NDEATH"), self.node.ndeath(), qos=1, retain=False).mid

    def _route(self, message: paho.MQTTMessage) -> None:
        raw = bytes(message.payload)
        if message.topic == self.node.topic("NCMD"):
            self._node_command(raw)
            return
        prefix = self.node.topic("DCMD") + "/"
        if message.topic.startswith(prefix):
            self._on_dcmd(message.topic[len(prefix) :], raw)

    def _node_command(self, raw: bytes) -> None:
        try:
            rebirth = wants_rebirth(self.node, raw)
        except CommandError as exc:
            self.bad_node_commands += 1
            limited.warning("NCMD refused; nothing changed", "ncmd", error=str(exc))
            return
        if not rebirth:
            return
        self.rebirth_requests += 1
        if self._births_due:
            self.rebirths_coalesced += 1
        self._births_due = True
        self._state_dirty.set()  # the request counters are node metrics
