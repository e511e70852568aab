"""Schemas, JSON logs, sd_notify, the metrics server."""

from __future__ import annotations

import json
import logging
import socket
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest

from linewatch.edge.observability import sdnotify
from linewatch.edge.observability.logs import JsonFormatter
from linewatch.edge.observability.telemetry import MetricsServer, Telemetry
from linewatch.edge.publish import payloads


@pytest.mark.parametrize("name", payloads.SCHEMA_FILES)
def test_schemas_are_valid_draft_2020_12(name: str) -> None:
    schema = payloads.schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)


def test_status_and_response_builders_validate() -> None:
    payloads.validate(
        "status", payloads.status_payload("c", "online", {"name": "m", "version": 3}, "ort-cpu", "boom")
    )
    payloads.validate("status", payloads.status_payload("c", "offline", None, None))
    payloads.validate("cmd_response", payloads.response_payload("c", "reload", None, False, "bad"))
    with pytest.raises(jsonschema.ValidationError):
        payloads.validate(
            "cmd_response", {**payloads.response_payload("c", "reload", None, True), "ok": False}
        )
    assert payloads.utc_iso(0) == "1970-01-01T00:00:00.000Z"


def test_json_log_lines() -> None:
    record = logging.makeLogRecord(
        {"msg": "hello %s", "args": ("world",), "levelname": "INFO", "name": "edge.x"}
    )
    record.camera = "cam0"
    doc = json.loads(JsonFormatter().format(record))
    assert doc["msg"] == "hello world" and doc["camera"] == "cam0" and doc["level"] == "INFO"


def test_sd_notify(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind(str(path))
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        assert sdnotify.notify("WATCHDOG=1")
        assert server.recv(100) == b"WATCHDOG=1"
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    assert sdnotify.watchdog_interval() == 2.0
    monkeypatch.setenv("WATCHDOG_PID", "1")
    assert sdnotify.watchdog_interval() is None


def test_metrics_server_endpoints() -> None:
    tel = Telemetry()
    tel.observe("cam0", "infer", 3.0)
    tel.frames.labels("cam0").inc()
    healthy = {"ok": True}
    server = MetricsServer(tel, "127.0.0.1", 0, lambda: (healthy["ok"], {"why": "test"}))
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        text = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
        assert 'linewatch_edge_frames_total{camera="cam0"} 1.0' in text
        assert json.loads(urllib.request.urlopen(base + "/healthz", timeout=30).read())["status"] == "ok"
        healthy["ok"] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz", timeout=30)
        assert err.value.code == 503
        assert tel.camera("cam0").stages["infer"].percentiles()["p50"] == 3.0
    finally:
        server.stop()
