"""An independent Sparkplug B host for the tests: decodes what a recorder received with the schema.

Independent of the edge's encoder: the message classes come from compiling ``sparkplug_b.proto``
with protoc (grpcio-tools) into a descriptor set here, loaded into a pool of its own; nothing of
``linewatch.edge.publish.sparkplug`` is imported. Like a real host (Ignition's MQTT Engine), it learns
names, aliases and datatypes from the births and resolves DATA metrics by alias through them.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO = Path(__file__).resolve().parents[4] / "edge" / "publish" / "sparkplug" / "sparkplug_b.proto"


@cache
def payload_class() -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "spb.desc"
        subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}", f"--descriptor_set_out={out}",
             PROTO.name],
            check=True,
        )  # fmt: skip
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    pool = descriptor_pool.DescriptorPool()
    for f in files.file:
        pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{files.file[0].package}.Payload"))


def encode(metrics: list[dict[str, Any]], seq: int | None = None) -> bytes:
    """A command payload, as a host would write it: each metric a dict of Metric fields."""
    payload = payload_class()(timestamp=0)
    if seq is not None:
        payload.seq = seq
    for m in metrics:
        payload.metrics.add(**m)
    return payload.SerializeToString()


@dataclass
class Message:
    topic: str
    kind: str  # NBIRTH, DDATA, ...
    device: str | None
    seq: int | None
    metrics: list[dict[str, Any]]  # name (resolved through the birth), alias, value, is_historical, ...

    def value(self, name: str) -> Any:
        return next((m["value"] for m in self.metrics if m["name"] == name), None)


@dataclass
class Host:
    """Decodes a recorded stream in order; keeps the aliases of the latest births."""

    births: dict[str | None, dict[int, dict[str, Any]]] = field(default_factory=dict)
    messages: list[Message] = field(default_factory=list)

    def feed(self, recorded: list[tuple[str, bytes, bool]]) -> list[Message]:
        seen: set[bytes] = set()
        for topic, raw, _retained in recorded:
            if not topic.startswith("spBv1.0/") or raw in seen:
                continue  # QoS1 may deliver a message twice: the same bytes (same seq) are one message
            seen.add(raw)
            parts = topic.split("/")
            kind, device = parts[2], (parts[4] if len(parts) > 4 else None)
            if kind.endswith("CMD"):
                continue  # commands are the host's own messages (the tests send malformed ones)
            payload = payload_class().FromString(raw)
            metrics = []
            for m in payload.metrics:
                which = m.WhichOneof("value")
                entry = {
                    "name": m.name or None,
                    "alias": m.alias if m.HasField("alias") else None,
                    "datatype": m.datatype if m.HasField("datatype") else None,
                    "is_historical": m.is_historical,
                    "is_null": m.is_null,
                    "value": None if which is None else getattr(m, which),
                    "field": which,
                }
                if kind.endswith("BIRTH"):
                    self.births.setdefault(device, {})[entry["alias"]] = entry
                elif entry["name"] is None and entry["alias"] is not None:
                    declared = self.births.get(device, {}).get(entry["alias"])
                    entry["name"] = declared["name"] if declared else None
                metrics.append(entry)
            if kind == "NBIRTH":
                self.births = {None: self.births[None]}  # a new node birth: devices must be born again
            seq = payload.seq if payload.HasField("seq") else None
            self.messages.append(Message(topic, kind, device, seq, metrics))
        return self.messages
