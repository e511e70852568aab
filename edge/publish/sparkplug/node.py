"""The Sparkplug B state of one edge node (the box) and its devices (the cameras).

Why the payloads are built in two steps: a verdict is written to the outbox BEFORE it is sent, but its
``seq`` (0..255, per MQTT session, NBIRTH = 0) and whether it is historical are only known when the
link hands it to the socket. So a row holds a DDATA payload without ``seq``; ``stamp`` sets the seq
and, for a row written before the current session began (replayed store-and-forward data), sets
``is_historical`` on each metric, as Sparkplug 3.0 asks of data that was not sent live.

Report by exception: a verdict's row carries the frame id and the score (they change every frame) and
only the other frame metrics that changed since the previous row; state metrics (model, threshold,
counters, latencies) are compared with what the host was last told when the link pumps. After a birth,
metrics go by alias only.

Thread-safety: the postprocess thread encodes rows, the runtime and the command threads set state,
the link thread builds births and stamps; one lock guards the values.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from linewatch.edge.publish.sparkplug import sparkplug_b_pb2 as pb
from linewatch.edge.publish.sparkplug.metrics import (
    DEVICE_BY_NAME,
    DEVICE_METRICS,
    NODE_BY_NAME,
    NODE_METRICS,
    REBIRTH,
    MetricSpec,
    device_alias,
    fill,
    node_alias,
)

NAMESPACE = "spBv1.0"
ALWAYS_IN_FRAME = ("Inspection/Frame ID", "Inspection/Score")  # change every frame


def now_ms() -> int:
    return int(time.time() * 1000)


class SparkplugNode:
    """Topics, aliases, last values and sequence numbers of one edge node and its devices."""

    def __init__(self, group: str, edge_node: str, devices: list[str], qos: int = 1) -> None:
        self.group, self.edge_node, self.devices, self.qos = group, edge_node, list(devices), qos
        self._index = {d: i for i, d in enumerate(devices)}
        self._lock = threading.Lock()
        self._bdseq = -1  # the first CONNECT carries 0
        self._seq = 0
        none = dict.fromkeys
        self._values: dict[str | None, dict[str, Any]] = {None: none(m.name for m in NODE_METRICS)}
        self._values[None][REBIRTH] = False
        for d in devices:
            self._values[d] = none(m.name for m in DEVICE_METRICS)
            self._values[d].update({"Command/Reload": False, "Command/Snapshot": False})
        self._reported: dict[str | None, dict[str, Any]] = {k: dict(v) for k, v in self._values.items()}
        self._last_frame: dict[str, dict[str, Any]] = {d: {} for d in devices}

    # ----- names --------------------------------------------------------------------------------------
    def topic(self, kind: str, device: str | None = None) -> str:
        base = f"{NAMESPACE}/{self.group}/{kind}/{self.edge_node}"
        return base if device is None else f"{base}/{device}"

    def spec(self, device: str | None, name: str) -> MetricSpec | None:
        return (NODE_BY_NAME if device is None else DEVICE_BY_NAME).get(name)

    def alias(self, device: str | None, name: str) -> int:
        return node_alias(name) if device is None else device_alias(self._index[device], name)

    def by_alias(self, device: str | None, alias: int) -> MetricSpec | None:
        specs = NODE_METRICS if device is None else DEVICE_METRICS
        for m in specs:
            if self.alias(device, m.name) == alias:
                return m
        return None

    # ----- session numbers ------------------------------------------------------------------------
    @property
    def bdseq(self) -> int:
        return max(self._bdseq, 0)

    def next_bdseq(self) -> int:
        """A new MQTT CONNECT: bdSeq goes up by one (0..255), for its Will and the NBIRTH that follows."""
        with self._lock:
            self._bdseq = (self._bdseq + 1) % 256
            self._values[None]["bdSeq"] = self._bdseq
            return self._bdseq

    def _next_seq(self) -> int:
        self._seq = (self._seq + 1) % 256
        return self._seq

    # ----- births and deaths --------------------------------------------------------------------
    def ndeath(self) -> bytes:
        """NDEATH: only the bdSeq of the session it ends (no seq)."""
        payload = pb.Payload(timestamp=now_ms())
        self._metric(payload, None, NODE_BY_NAME["bdSeq"], self.bdseq, named=True, ts=payload.timestamp)
        return payload.SerializeToString()

    def births(self) -> list[tuple[str, bytes]]:
        """NBIRTH (seq 0, every node metric) then one DBIRTH per device: names, aliases, datatypes, values."""
        with self._lock:
            self._seq = 0
            out = [(self.topic("NBIRTH"), self._birth(None, 0))]
            for d in self.devices:
                out.append((self.topic("DBIRTH", d), self._birth(d, self._next_seq())))
            for key, values in self._values.items():
                self._reported[key] = dict(values)
            return out

    def _birth(self, device: str | None, seq: int) -> bytes:
        payload = pb.Payload(timestamp=now_ms(), seq=seq)
        for spec in NODE_METRICS if device is None else DEVICE_METRICS:
            value = None if spec.role == "event" else self._values[device][spec.name]
            self._metric(payload, device, spec, value, named=True, ts=payload.timestamp)
        return payload.SerializeToString()

    def death(self, device: str) -> bytes:
        with self._lock:
            return pb.Payload(timestamp=now_ms(), seq=self._next_seq()).SerializeToString()

    def _metric(
        self, payload: pb.Payload, device: str | None, spec: MetricSpec, value: Any, named: bool, ts: int
    ) -> None:
        m = payload.metrics.add(alias=self.alias(device, spec.name), timestamp=ts)
        if named:  # births name every metric and declare its datatype; DATA goes by alias
            m.name, m.datatype = spec.name, spec.datatype
        fill(m, spec, value)

    # ----- data -----------------------------------------------------------------------------------------
    def frame_data(self, device: str, captured_at: float, values: dict[str, Any]) -> bytes:
        """A verdict's DDATA, without seq (``stamp`` adds it): frame id, score and what else changed."""
        ts = int(captured_at * 1000)
        payload = pb.Payload(timestamp=ts)
        with self._lock:
            last = self._last_frame[device]
            for name, value in values.items():
                if name in ALWAYS_IN_FRAME or last.get(name, ...) != value:
                    self._metric(payload, device, DEVICE_BY_NAME[name], value, named=False, ts=ts)
            last.update(values)
            last.pop("Inspection/Heatmap", None)  # a heatmap is sent with its frame, never compared
            self._values[device].update(values)
            self._values[device]["Inspection/Heatmap"] = None  # births never repeat an old picture
        return payload.SerializeToString()

    def set_state(self, device: str | None, values: dict[str, Any]) -> None:
        with self._lock:
            self._values[device].update(values)

    def changed_state(self, device: str | None) -> bytes | None:
        """NDATA/DDATA (with seq) of the state metrics that changed since the host was told, or None."""
        with self._lock:
            now, new, told = now_ms(), self._values[device], self._reported[device]
            specs = NODE_METRICS if device is None else DEVICE_METRICS
            changed = [s for s in specs if s.role == "state" and new[s.name] != told[s.name]]
            if not changed:
                return None
            payload = pb.Payload(timestamp=now, seq=self._next_seq())
            for spec in changed:
                self._metric(payload, device, spec, new[spec.name], named=False, ts=now)
                told[spec.name] = new[spec.name]
            return payload.SerializeToString()

    def event(self, device: str, name: str, value: Any) -> bytes:
        """A one-off DDATA (a snapshot), with seq."""
        with self._lock:
            now = now_ms()
            payload = pb.Payload(timestamp=now, seq=self._next_seq())
            self._metric(payload, device, DEVICE_BY_NAME[name], value, named=False, ts=now)
            return payload.SerializeToString()

    def stamp(self, raw: bytes, historical: bool) -> bytes:
        """A stored DDATA as it goes on the wire: the next seq, and ``is_historical`` when replayed."""
        payload = pb.Payload.FromString(raw)
        with self._lock:
            payload.seq = self._next_seq()
        if historical:
            for m in payload.metrics:
                m.is_historical = True
        return payload.SerializeToString()
