"""Every JSON payload the edge publishes, built in one place and checked against ``edge/schemas``.

The schemas are the contract with SCADA subscribers; building payloads here (and validating them in
the tests, and validating inbound commands at run time) keeps code and contract from drifting apart.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from functools import cache
from importlib import resources
from typing import Any

import jsonschema

RESULT = "linewatch.edge.result/1"
SUMMARY = "linewatch.edge.summary/1"
STATUS = "linewatch.edge.status/1"
METRICS = "linewatch.edge.metrics/1"
CMD_RESPONSE = "linewatch.edge.cmd-response/1"
SCHEMA_FILES = (
    "result",
    "summary",
    "status",
    "metrics",
    "cmd_reload",
    "cmd_set_threshold",
    "cmd_snapshot",
    "cmd_response",
)


def utc_iso(ts: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-01-02T03:04:05.678Z."""
    when = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``edge/schemas/<name>.json`` (shipped as package data)."""
    text = resources.files("edge").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
    return json.loads(text)


@cache
def validator(name: str) -> jsonschema.protocols.Validator:
    cls = jsonschema.validators.validator_for(schema(name))
    return cls(schema(name), format_checker=cls.FORMAT_CHECKER)


def validate(name: str, payload: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when ``payload`` breaks schema ``name``."""
    validator(name).validate(payload)


def schema_for(payload: dict[str, Any]) -> str:
    """Which schema file a published payload belongs to, from its ``schema`` field."""
    tag = payload.get("schema")
    names = {
        RESULT: "result",
        SUMMARY: "summary",
        STATUS: "status",
        METRICS: "metrics",
        CMD_RESPONSE: "cmd_response",
    }
    if tag not in names:
        raise ValueError(f"unknown payload schema {tag!r}")
    return names[tag]


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def status_payload(
    camera: str,
    state: str,
    model: dict[str, Any] | None,
    backend: str | None,
    error: str | None = None,
    threshold: float | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": STATUS,
        "state": state,
        "camera": camera,
        "model": model,
        "backend": backend,
        "ts": utc_iso(),
    }
    if error:
        out["error"] = error
    if threshold is not None:
        out["threshold"] = threshold
    if reason:
        out["reason"] = reason
    return out


def response_payload(
    camera: str,
    verb: str,
    request_id: str | None,
    ok: bool,
    error: str | None = None,
    result: dict[str, Any] | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "schema": CMD_RESPONSE,
        "ts": utc_iso(),
        "camera": camera,
        "verb": verb,
        "id": request_id,
        "ok": ok,
    }
    if error is not None:
        out["error"] = error
    if result is not None:
        out["result"] = result
    return out
