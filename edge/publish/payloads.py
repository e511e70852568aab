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
HANDSHAKE = "linewatch.edge.handshake/1"
SCHEMA_FILES = (
    "result",
    "summary",
    "status",
    "metrics",
    "cmd_reload",
    "cmd_set_threshold",
    "cmd_snapshot",
    "cmd_trigger",
    "cmd_ack",
    "cmd_response",
    "handshake",
)


def utc_iso(ts: float | None = None) -> str:
    """UTC ISO-8601 with milliseconds and a Z, e.g. 2026-01-02T03:04:05.678Z."""
    when = datetime.now(timezone.utc) if ts is None else datetime.fromtimestamp(ts, tz=timezone.utc)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@cache
def schema(name: str) -> dict[str, Any]:
    """The JSON Schema ``edge/schemas/<name>.json`` (shipped as package data)."""
    text = resources.files("linewatch.edge").joinpath("schemas", f"{name}.json").read_text(encoding="utf-8")
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
        HANDSHAKE: "handshake",
    }
    if tag not in names:
        raise ValueError(f"unknown payload schema {tag!r}")
    return names[tag]


def dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode("utf-8")


def result_payload(
    frame: Any,
    camera: str,
    model: Any,
    *,
    score: float,
    threshold: float,
    anomalous: bool,
    task: int,
    regions: list[dict[str, Any]],
    latency_ms: dict[str, float],
    heatmap: bool,
    error: str | None = None,
) -> dict[str, Any]:
    """The per-frame verdict (``result`` schema). ``frame`` is an ``edge.capture.frame_sources.Frame``, ``model`` the
    ``LoadedModel`` that scored it (its name, version, backend and task names)."""
    tasks = model.bundle.tasks
    fh, fw = frame.image.shape[:2]
    out: dict[str, Any] = {
        "schema": RESULT,
        "ts": utc_iso(frame.captured_at),
        "frame_id": frame.frame_id,
        "camera": camera,
        "model": model.ref(),
        "backend": model.backend_name,
        "score": round(score, 6),
        "threshold": threshold,
        "anomalous": anomalous,
        "task": task,
        "task_name": tasks[task] if 0 <= task < len(tasks) else None,
        "regions": regions,
        "latency_ms": {k: round(v, 3) for k, v in latency_ms.items()},
        "frame_size": {"width": fw, "height": fh},
        "source": {"pos": frame.source_pos, "file": frame.source_name},
        "heatmap": heatmap,
    }
    if error:
        out["error"] = error
    return out


def summary_payload(
    camera: str, model: Any, summary: Any, period_s: float, threshold: float
) -> dict[str, Any]:
    """Normal frames between two summaries (publish mode ``anomalies``); ``summary`` is a camera's
    ``edge.capture.camera.Summary``, ``model`` the loaded model or None before the first one."""
    return {
        "schema": SUMMARY,
        "ts": utc_iso(),
        "camera": camera,
        "model": model.ref() if model else {"name": "unknown", "version": 0},
        "period_s": round(period_s, 3),
        "frames": summary.frames,
        "anomalies": summary.anomalies,
        "first_frame_id": summary.first_frame_id,
        "last_frame_id": summary.last_frame_id,
        "max_score": None if summary.max_score is None else round(summary.max_score, 6),
        "threshold": threshold,
    }


def status_payload(
    camera: str,
    state: str,
    model: dict[str, Any] | None,
    backend: str | None,
    error: str | None = None,
    threshold: float | None = None,
    reason: str | None = None,
    outbox: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """``outbox``: present while the outbox loses or drops verdicts (disk full, max_rows reached)."""
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
    if outbox:
        out["outbox"] = outbox
    return out


def handshake_payload(snapshot: dict[str, Any]) -> dict[str, Any]:
    """``<root>/handshake``: ``snapshot`` is ``edge.handshake.TriggerGate.snapshot()``."""
    return {"schema": HANDSHAKE, "ts": utc_iso(), **snapshot}


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
