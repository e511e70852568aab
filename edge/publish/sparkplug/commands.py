"""Sparkplug B commands: NCMD ``Node Control/Rebirth`` and DCMD writes, mapped onto the edge's commands.

A DCMD is decoded with the Sparkplug schema and every metric in it is checked (known name or alias,
writable, the declared datatype, the value in the right field) BEFORE anything runs, so a DCMD with
one bad metric changes nothing. The writes map onto the JSON commands (``edge/commands.py``):

- ``Inspection/Threshold`` (Double)   -> set-threshold, checked against ``cmd_set_threshold.json``;
- ``Command/Reload`` (Boolean true)   -> reload (the newest bundle of the store);
- ``Command/Snapshot`` (Boolean true) -> snapshot, the JPEG as the ``Snapshot/JPEG`` DDATA metric.

Sparkplug has no reply message: the outcome is the device's ``Command/Last Result`` metric, and a
refusal adds one to ``Command/Rejected`` (both by exception), besides a rate-limited log line.
"""

from __future__ import annotations

import logging
from functools import partial
from typing import Any

import jsonschema
from google.protobuf.message import DecodeError

from linewatch.edge.commands import CommandHandler
from linewatch.edge.observability.logs import RepeatLimiter
from linewatch.edge.publish import payloads
from linewatch.edge.publish.sparkplug import sparkplug_b_pb2 as pb
from linewatch.edge.publish.sparkplug.metrics import REBIRTH, MetricSpec, MetricTypeError, read

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

MAX_PAYLOAD = 64 * 1024


class CommandError(ValueError):
    """A Sparkplug command that is refused; the message says why."""


def _decode(raw: bytes) -> pb.Payload:
    if len(raw) > MAX_PAYLOAD:
        raise CommandError(f"payload too large ({len(raw)} bytes, max {MAX_PAYLOAD})")
    try:
        payload = pb.Payload.FromString(raw)
    except DecodeError as exc:
        raise CommandError(f"not a Sparkplug B payload: {exc}") from exc
    if not payload.metrics:
        raise CommandError("the command carries no metric")
    return payload


def _resolve(node: Any, device: str | None, metric: Any) -> tuple[MetricSpec, Any]:
    spec = node.spec(device, metric.name) if metric.name else None
    if spec is None and not metric.name and metric.HasField("alias"):
        spec = node.by_alias(device, metric.alias)
    if spec is None:
        what = repr(metric.name) if metric.name else f"alias {metric.alias}"
        raise CommandError(f"unknown metric {what}")
    if not spec.writable:
        raise CommandError(f"metric {spec.name!r} is not writable")
    try:
        return spec, read(metric, spec)
    except MetricTypeError as exc:
        raise CommandError(str(exc)) from exc


def wants_rebirth(node: Any, raw: bytes) -> bool:
    """An NCMD: True for ``Node Control/Rebirth = true``; raises CommandError for anything malformed."""
    wanted = False
    for metric in _decode(raw).metrics:
        spec, value = _resolve(node, None, metric)
        if spec.name == REBIRTH:
            wanted = wanted or bool(value)
    return wanted


def parse_dcmd(node: Any, device: str, raw: bytes) -> list[tuple[str, dict[str, Any]]]:
    """A DCMD as the edge commands it asks for, ``[(verb, request)]``; CommandError when any part is bad."""
    if device not in node.devices:
        raise CommandError(f"unknown device {device!r}; known: {node.devices}")
    out: list[tuple[str, dict[str, Any]]] = []
    for metric in _decode(raw).metrics:
        spec, value = _resolve(node, device, metric)
        if spec.name == "Inspection/Threshold":
            request: dict[str, Any] = {"threshold": value}
            try:
                payloads.validate("cmd_set_threshold", request)
            except jsonschema.ValidationError as exc:
                raise CommandError(f"Inspection/Threshold: {exc.message}") from exc
            out.append(("set-threshold", request))
        elif spec.name == "Handshake/Trigger":
            request = {"recipe": value}
            try:
                payloads.validate("cmd_trigger", request)
            except jsonschema.ValidationError as exc:
                raise CommandError(f"Handshake/Trigger: {exc.message}") from exc
            out.append(("trigger", request))
        elif value is not True:
            raise CommandError(f"write true to {spec.name!r} (got {value!r})")
        elif spec.name == "Command/Reload":
            out.append(("reload", {}))
        elif spec.name == "Command/Snapshot":
            out.append(("snapshot", {}))
        elif spec.name == "Handshake/Ack":
            out.append(("ack", {}))
    return out


class DeviceCommands:
    """Runs a camera's DCMD through the runtime's CommandHandler; the outcome goes to its metrics."""

    def __init__(self, handler: CommandHandler, node: Any, link: Any) -> None:
        self.handler, self.node, self.link = handler, node, link
        self.rejected: dict[str, int] = dict.fromkeys(node.devices, 0)

    def handle(self, camera: Any, raw: bytes) -> None:
        try:
            requests = parse_dcmd(self.node, camera.name, raw)
        except CommandError as exc:
            self.rejected[camera.name] += 1
            self.handler.counters["error"] += 1
            limited.warning("DCMD refused; nothing changed", camera.name, camera=camera.name, error=str(exc))
            self._result(camera.name, f"refused: {exc}", rejected=True)
            return
        for verb, request in requests:
            self.handler.execute(
                camera,
                verb,
                request,
                partial(self._reply, camera.name, verb),
                snapshot_to=partial(self.link.send_event, camera.name, "Snapshot/JPEG"),
            )

    def _reply(
        self, device: str, verb: str, error: str | None = None, result: dict[str, Any] | None = None
    ) -> None:
        self.handler.counters["error" if error else "ok"] += 1
        self._result(device, f"{verb}: {'error: ' + error if error else 'ok'}")

    def _result(self, device: str, text: str, rejected: bool = False) -> None:
        self.node.set_state(device, {"Command/Last Result": text, "Command/Rejected": self.rejected[device]})
        self.link.publish_status()
