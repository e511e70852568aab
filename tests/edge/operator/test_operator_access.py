"""Access control and feedback of the operator page over real HTTP, without a browser.

The app is served by the edge's own metrics server; frames are recorded into its LiveView as the
postprocess stage would. Covers what the browser test does not: bearer, basic and proxy logins, the
CSRF header, the rate limit (429, audited), frames no longer held, and that no path or secret leaks.
"""

from __future__ import annotations

import base64
import json
import logging
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from linewatch.edge.config import OperatorConfig, load_config
from linewatch.edge.observability.telemetry import MetricsServer, Telemetry
from linewatch.edge.operator.app import OperatorApp
from linewatch.edge.operator.live import LiveView, Shown
from linewatch.edge.operator.state import redact

TOKEN = "t0ken-value"


def shown(frame_id: int, task: str | None = "brick") -> Shown:
    image = np.full((30, 40, 3), frame_id, np.uint8)
    return Shown("cam0", frame_id, image, np.zeros((8, 8), np.float32), 0.7, 0.5, True, [],
                 {"name": "m", "version": 3}, task)  # fmt: skip


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Any]:
    servers: list[MetricsServer] = []

    def serve(**operator: Any) -> tuple[str, OperatorApp]:
        cfg = OperatorConfig(**operator)
        live = LiveView(4)
        app = OperatorApp(cfg, runtime=None, live=live)
        server = MetricsServer(Telemetry(), "127.0.0.1", 0, lambda: (True, {}), app.handle)
        server.start()
        servers.append(server)
        return f"http://127.0.0.1:{server.port}", app

    yield serve
    for s in servers:
        s.stop()


def call(url: str, body: dict | None = None, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, headers=headers or {}, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_closed_by_default_with_a_log_line(served: Any, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        url, _ = served()
    assert any("operator page disabled: no credentials configured" in r.message for r in caplog.records)
    for path in ("/operator", "/operator/login", "/operator/api/state", "/operator/static/operator.js"):
        assert call(url + path)[0] == 403
    status, _ = call(url + "/operator/api/feedback", {"kind": "false_alarm", "camera": "cam0", "frame_id": 1},
                     {"Authorization": f"Bearer {TOKEN}", "X-Linewatch-Feedback": "1"})  # fmt: skip
    assert status == 403


def test_secrets_stay_out_of_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "edge.toml"
    path.write_text('[operator]\ntoken = "x"\n')
    with pytest.raises(ValueError, match=r"operator\.token: not allowed in the config file"):
        load_config(path)


def test_bearer_basic_and_proxy_logins(served: Any, tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2\n")
    url, app = served(
        token=TOKEN, username="ops", password_file=str(secret), proxy_user_header="X-Remote-User"
    )
    app.live.record(shown(1))
    frame = url + "/operator/frame/cam0/1.jpg"
    basic = base64.b64encode(b"ops:hunter2").decode()
    wrong = base64.b64encode(b"ops:hunter3").decode()
    for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": f"Basic {wrong}"}):
        assert call(frame, headers=headers)[0] == 401
    for headers in ({"Authorization": f"Bearer {TOKEN}"}, {"Authorization": f"Basic {basic}"},
                    {"X-Remote-User": "carol"}):  # fmt: skip
        status, body = call(frame, headers=headers)
        assert status == 200 and body[:2] == b"\xff\xd8"  # a JPEG, encoded on request
    assert call(url + "/operator/frame/cam0/2.jpg", headers={"X-Remote-User": "carol"})[0] == 404


def test_feedback_rate_limited_audited_and_path_safe(served: Any, tmp_path: Path) -> None:
    drop, review, audit = tmp_path / "drop", tmp_path / "review", tmp_path / "audit.jsonl"
    url, app = served(token=TOKEN, drop_dir=str(drop), review_dir=str(review), audit_log=str(audit),
                      feedback_per_minute=2)  # fmt: skip
    for i in range(1, 5):
        app.live.record(shown(i))
    app.live.record(shown(9, task="../../etc"))
    auth = {"Authorization": f"Bearer {TOKEN}", "X-Linewatch-User": "bob"}
    fb = url + "/operator/api/feedback"
    assert (
        call(fb, {"kind": "false_alarm", "camera": "cam0", "frame_id": 1}, auth)[0] == 403
    )  # no CSRF header
    auth["X-Linewatch-Feedback"] = "1"
    status, body = call(fb, {"kind": "false_alarm", "camera": "cam0", "frame_id": 4}, auth)
    assert status == 200 and json.loads(body)["filed"] == "brick/train/good/cam0-f000000004-v3.png"
    assert str(tmp_path) not in body.decode()
    assert (drop / "brick" / "train" / "good" / "cam0-f000000004-v3.png").is_file()
    assert call(fb, {"kind": "missed", "camera": "cam0", "frame_id": 9}, auth)[0] == 409  # unsafe task name
    assert call(fb, {"kind": "missed", "camera": "cam0", "frame_id": 3}, auth)[0] == 429  # 2 a minute
    assert not review.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["audit.jsonl", "drop"]
    lines = [json.loads(x) for x in audit.read_text().splitlines()]
    assert [(x["user"], x.get("frame_id"), x["outcome"]) for x in lines] == [
        ("bob", None, "refused"), ("bob", 4, "filed"), ("bob", 9, "refused"), ("bob", 3, "refused"),
    ]  # fmt: skip
    assert lines[1]["model"] == {"name": "m", "version": 3} and lines[3]["error"].startswith("rate limit")
    assert TOKEN not in audit.read_text()


def test_errors_shown_on_the_page_name_no_paths() -> None:
    text = "bundle refused (signature): /var/lib/linewatch/bundles/.pc-v000007/manifest.sig: bad"
    assert redact(text) == "bundle refused (signature): …/manifest.sig: bad"
    assert redact(None) is None and redact("no path here") == "no path here"
