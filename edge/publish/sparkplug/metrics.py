"""The Sparkplug B metric catalogue of a Linewatch edge node and its camera devices, and value codecs.

One list says every metric's name, datatype and role, so the births, the DATA messages, the DCMD
checks and the README's table cannot disagree. Roles:

- ``frame``: a verdict's values, encoded when the verdict is written to the outbox (so a replayed row
  carries the values of its own frame, flagged ``is_historical`` when it predates the session);
- ``state``: the box's state (model, threshold, counters, latencies), compared with what the host was
  last told and sent by exception when the link pumps;
- ``event``: sent once when it happens (a snapshot), null in the births;
- ``birth``: in the births only (``bdSeq``).

``writable`` metrics are the ones a DCMD/NCMD may set; anything else is refused.

Aliases are fixed by position, unique over the whole node (node metrics 1.., camera ``i``'s from
``1000 * (i + 1)``), so they stay the same over rebirths and restarts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from linewatch.edge.publish.sparkplug import sparkplug_b_pb2 as pb

Metric = pb.Payload.Metric
DT = pb.DataType

# Which oneof field carries each datatype (Sparkplug 3.0, 6.4.16).
_FIELD = {
    DT.Int8: "int_value",
    DT.Int16: "int_value",
    DT.Int32: "int_value",
    DT.UInt8: "int_value",
    DT.UInt16: "int_value",
    DT.UInt32: "int_value",
    DT.Int64: "long_value",
    DT.UInt64: "long_value",
    DT.DateTime: "long_value",
    DT.Float: "float_value",
    DT.Double: "double_value",
    DT.Boolean: "boolean_value",
    DT.String: "string_value",
    DT.Text: "string_value",
    DT.UUID: "string_value",
    DT.Bytes: "bytes_value",
    DT.File: "bytes_value",
}
_SIGNED_BITS = {DT.Int8: 8, DT.Int16: 16, DT.Int32: 32, DT.Int64: 64}


@dataclass(frozen=True)
class MetricSpec:
    name: str
    datatype: int
    role: str  # "frame" | "state" | "event" | "birth" | "command"
    writable: bool = False
    doc: str = ""


NODE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("bdSeq", DT.Int64, "birth", doc="birth/death sequence of this MQTT session (0..255)"),
    MetricSpec("Node Control/Rebirth", DT.Boolean, "command", True, "write true: births are sent again"),
    MetricSpec("Outbox/Depth", DT.UInt64, "state", doc="verdicts waiting for the broker's PUBACK"),
    MetricSpec("Outbox/Dropped", DT.UInt64, "state", doc="oldest rows dropped at outbox.max_rows"),
    MetricSpec("Outbox/Not Stored", DT.UInt64, "state", doc="verdicts lost to a failed write (disk full)"),
    MetricSpec("Rebirth/Requests", DT.UInt64, "state", doc="Node Control/Rebirth writes received"),
    MetricSpec("Rebirth/Coalesced", DT.UInt64, "state", doc="requests merged into a pending rebirth"),
)

DEVICE_METRICS: tuple[MetricSpec, ...] = (
    MetricSpec("Inspection/Frame ID", DT.UInt64, "frame", doc="frame id of the last verdict (every DDATA)"),
    MetricSpec("Inspection/Score", DT.Double, "frame", doc="normalised anomaly score, 0..1"),
    MetricSpec("Inspection/Anomalous", DT.Boolean, "frame", doc="the verdict: true = NG"),
    MetricSpec("Inspection/Regions", DT.UInt32, "frame", doc="defect regions found"),
    MetricSpec("Inspection/Task", DT.String, "frame", doc="task (product) the model recognised"),
    MetricSpec("Inspection/Heatmap", DT.Bytes, "frame", doc="overlay JPEG ([sparkplug] heatmap = true)"),
    MetricSpec("Inspection/Threshold", DT.Double, "state", True, "decision threshold; write = set-threshold"),
    MetricSpec("Counters/Frames", DT.UInt64, "state", doc="frames scored since start"),
    MetricSpec("Counters/Anomalies", DT.UInt64, "state", doc="anomalous frames since start"),
    MetricSpec("Counters/Dropped Frames", DT.UInt64, "state", doc="frames dropped by the full frame queue"),
    MetricSpec("Model/Name", DT.String, "state"),
    MetricSpec("Model/Version", DT.Int64, "state"),
    MetricSpec("Model/Backend", DT.String, "state", doc="e.g. ort-cpu, tensorrt"),
    MetricSpec("Model/Error", DT.String, "state", doc="last reload failure, empty when none"),
    MetricSpec("Latency/p50 ms", DT.Double, "state", doc="capture -> PUBACK, median over the window"),
    MetricSpec("Latency/p99 ms", DT.Double, "state", doc="capture -> PUBACK, 99th percentile"),
    MetricSpec("Command/Reload", DT.Boolean, "command", True, "write true = reload (newest bundle)"),
    MetricSpec("Command/Snapshot", DT.Boolean, "command", True, "write true = snapshot"),
    MetricSpec("Command/Last Result", DT.String, "state", doc="'<verb>: ok' or the refusal"),
    MetricSpec("Command/Rejected", DT.UInt64, "state", doc="DCMDs refused (nothing changed)"),
    MetricSpec("Snapshot/JPEG", DT.Bytes, "event", doc="the last snapshot (null in births)"),
    # PLC handshake of a triggered camera (edge/handshake.py); null on free-running cameras
    MetricSpec("Handshake/Trigger", DT.Int32, "command", True, "write the recipe index = trigger"),
    MetricSpec("Handshake/Ack", DT.Boolean, "command", True, "write true = the result was read"),
    MetricSpec("Handshake/State", DT.String, "state", doc="idle, armed, busy or ready"),
    MetricSpec("Handshake/Results Ready", DT.Boolean, "state", doc="a result is held until Ack"),
    MetricSpec("Handshake/OK", DT.Boolean, "state", doc="the held result: true = OK, false = NG"),
    MetricSpec("Handshake/Regions", DT.UInt32, "state", doc="the held result's region count"),
    MetricSpec("Handshake/Trigger ID", DT.UInt64, "state", doc="the last accepted trigger"),
    MetricSpec("Handshake/Missed", DT.UInt64, "state", doc="triggers with no frame/verdict in time"),
    MetricSpec("Handshake/Untriggered", DT.UInt64, "state", doc="frames with no trigger (not scored)"),
    MetricSpec("Handshake/Refused", DT.UInt64, "state", doc="triggers/acks refused (busy, no result)"),
)

NODE_BY_NAME = {m.name: m for m in NODE_METRICS}
DEVICE_BY_NAME = {m.name: m for m in DEVICE_METRICS}
REBIRTH = "Node Control/Rebirth"


def node_alias(name: str) -> int:
    return 1 + [m.name for m in NODE_METRICS].index(name)


def device_alias(device_index: int, name: str) -> int:
    return 1000 * (device_index + 1) + [m.name for m in DEVICE_METRICS].index(name)


def fill(metric: Metric, spec: MetricSpec, value: Any) -> Metric:
    """Put ``value`` (None = null) into ``metric`` as ``spec``'s datatype."""
    if value is None:
        metric.is_null = True
        return metric
    field = _FIELD[spec.datatype]
    if field == "long_value" and spec.datatype == DT.Int64:
        value = int(value) & 0xFFFFFFFFFFFFFFFF  # two's complement in the uint64 field (6.4.16)
    elif field == "int_value" and spec.datatype in _SIGNED_BITS:
        value = int(value) & 0xFFFFFFFF
    setattr(metric, field, value)
    return metric


class MetricTypeError(ValueError):
    """A metric whose value does not fit its declared datatype (the message names both)."""


def read(metric: Metric, spec: MetricSpec) -> Any:
    """The value of an inbound metric, checked against ``spec``; raises MetricTypeError when it does not fit."""
    if metric.HasField("datatype") and metric.datatype != spec.datatype:
        raise MetricTypeError(
            f"metric {spec.name!r} is {DT.Name(spec.datatype)}, the command says "
            f"{DT.Name(metric.datatype) if metric.datatype in DT.values() else metric.datatype}"
        )
    if metric.is_null:
        raise MetricTypeError(f"metric {spec.name!r}: a null value is not a command")
    got = metric.WhichOneof("value")
    want = _FIELD[spec.datatype]
    if got != want:
        raise MetricTypeError(
            f"metric {spec.name!r} is {DT.Name(spec.datatype)}; it carries {got or 'no value'}"
        )
    return getattr(metric, want)
