"""The operator page's HTTP routes, served by the metrics server (``/operator...``) on the same port.

No build step and no CDN (the box is offline): the page is HTML rendered here, plus one small static
script and stylesheet shipped as package data. Live updates are server-sent events: one long response
per viewer, pushed when the postprocess stage records a verdict, at most ``operator.max_fps`` a second.
Images are encoded only when a browser asks for them (``edge/operator/live.py``).

Every route but the login form and the static files needs a user (``edge/operator/auth.py``). Feedback
is a POST with a custom header (a cross-site form cannot send one) and a SameSite=Strict cookie.
"""

from __future__ import annotations

import contextlib
import html
import json
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler
from importlib import resources
from string import Template
from typing import Any
from urllib.parse import parse_qs

from linewatch.edge.config import OperatorConfig
from linewatch.edge.operator.auth import COOKIE, Auth, RateLimiter
from linewatch.edge.operator.feedback import KINDS, FeedbackError, FeedbackWriter
from linewatch.edge.operator.live import LiveView
from linewatch.edge.operator.state import PageState

log = logging.getLogger(__name__)

PREFIX = "/operator"
STATIC = {"operator.js": "text/javascript", "operator.css": "text/css"}
_FRAME = re.compile(r"^/operator/frame/([A-Za-z0-9][A-Za-z0-9_.-]{0,63})/(\d{1,18})\.jpg$")
DISABLED = (
    "operator page disabled: no credentials configured (set LINEWATCH_EDGE_OPERATOR__TOKEN, "
    "operator.token_file, operator.username with a password, or operator.proxy_user_header)"
)
MAX_BODY = 4096
LOGINS_PER_MINUTE = 10


def _static(name: str) -> bytes:
    return (resources.files("linewatch.edge.operator") / "static" / name).read_bytes()


def _model_row(m: dict[str, Any]) -> str:
    """One row of the model history table (the script rebuilds it the same way after a swap)."""
    gate = m["gate"]
    cells = [
        f"{m['name']} v{m['version']}" + (" (live)" if m["live"] else ""),
        str(m["created"]),
        ", ".join(m["added"]) or ("more good images" if m["bank_only"] else "-"),
        "-" if not gate else ("passed" if gate["passed"] else "refused") + ": " + "; ".join(gate["checks"]),
        ", ".join(time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t)) for t in m["swapped"]),
        ", ".join(m["tasks"]),
    ]
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


class OperatorApp:
    """Routes ``/operator...`` requests; ``handle`` returns False for paths that are not its own."""

    def __init__(self, cfg: OperatorConfig, runtime: Any, live: LiveView, refresh_log: Any = None) -> None:
        self.cfg = cfg
        self.auth = Auth(cfg)
        self.limiter = RateLimiter(cfg.feedback_per_minute)
        self.login_limiter = RateLimiter(LOGINS_PER_MINUTE)  # per client address: no token guessing
        self.live = live
        self.state = PageState(runtime, live, refresh_log)
        self.feedback = FeedbackWriter(cfg.drop_dir, cfg.review_dir, cfg.audit_log)
        self.stopping = threading.Event()
        self.viewers = 0
        self._viewers_lock = threading.Lock()
        if self.auth.enabled:
            log.info("operator page enabled", extra={"path": PREFIX})
        else:
            log.warning(DISABLED)

    def stop(self) -> None:
        self.stopping.set()
        with self.live.changed:
            self.live.changed.notify_all()

    # ----- plumbing ---------------------------------------------------------------------------------
    @staticmethod
    def _send(
        h: BaseHTTPRequestHandler, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", ctype)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Cache-Control", "no-store")
        h.send_header("X-Content-Type-Options", "nosniff")
        h.send_header("X-Frame-Options", "DENY")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(body)

    def _json(self, h: BaseHTTPRequestHandler, status: int, doc: Any) -> None:
        self._send(h, status, json.dumps(doc).encode(), "application/json")

    def _user(self, h: BaseHTTPRequestHandler) -> str | None:
        return self.auth.user(h.headers, h.client_address[0])

    def handle(self, h: BaseHTTPRequestHandler, method: str) -> bool:
        path = h.path.split("?", 1)[0]
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return False
        if not self.auth.enabled:
            self._send(h, 403, (DISABLED + "\n").encode(), "text/plain; charset=utf-8")
            return True
        name = path[len(PREFIX) + len("/static/") :] if path.startswith(PREFIX + "/static/") else None
        if name is not None:
            if method == "GET" and name in STATIC:
                self._send(h, 200, _static(name), STATIC[name])
            else:
                self._send(h, 404, b"not found\n", "text/plain")
            return True
        if path == PREFIX + "/login":
            self._login(h, method)
            return True
        user = self._user(h)
        if user is None:
            if method == "GET" and path in (PREFIX, PREFIX + "/"):
                self._login_form(h, 401, "")
            else:
                self._json(h, 401, {"error": "login required"})
            return True
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._route(h, method, path, user)
        return True

    def _route(self, h: BaseHTTPRequestHandler, method: str, path: str, user: str) -> None:
        if method == "GET" and path in (PREFIX, PREFIX + "/"):
            self._page(h, user)
        elif method == "GET" and path == PREFIX + "/api/state":
            self._json(h, 200, self.state.snapshot())
        elif method == "GET" and path == PREFIX + "/api/models":
            self._json(h, 200, self.state.models())
        elif method == "GET" and path == PREFIX + "/events":
            self._events(h)
        elif method == "GET" and (m := _FRAME.match(path)):
            shown = self.live.find(m.group(1), int(m.group(2)))
            if shown is None:
                self._send(h, 404, b"frame no longer held\n", "text/plain")
            else:
                self._send(h, 200, shown.overlay(), "image/jpeg")
        elif method == "POST" and path == PREFIX + "/api/feedback":
            self._feedback(h, user)
        elif method == "POST" and path == PREFIX + "/logout":
            self.auth.logout(h.headers.get("Cookie"))
            expire = f"{COOKIE}=; Path={PREFIX}; Max-Age=0; HttpOnly; SameSite=Strict"
            self._send(h, 303, b"", "text/plain", {"Location": PREFIX + "/login", "Set-Cookie": expire})
        else:
            self._send(h, 404, b"not found\n", "text/plain")

    # ----- login --------------------------------------------------------------------------------------
    def _login_form(self, h: BaseHTTPRequestHandler, status: int, message: str) -> None:
        page = Template(_static("login.html").decode()).substitute(message=html.escape(message))
        self._send(h, status, page.encode(), "text/html; charset=utf-8")

    def _read_body(self, h: BaseHTTPRequestHandler) -> bytes:
        length = int(h.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise FeedbackError("request too large", 413)
        return h.rfile.read(length) if length > 0 else b""

    def _login(self, h: BaseHTTPRequestHandler, method: str) -> None:
        if method != "POST":
            self._login_form(h, 200, "")
            return
        try:
            form = parse_qs(self._read_body(h).decode("utf-8", "replace"))
        except FeedbackError:
            self._login_form(h, 413, "request too large")
            return
        name, secret = form.get("name", [""])[0], form.get("secret", [""])[0]
        if not self.login_limiter.allow(h.client_address[0]):
            self._login_form(h, 429, f"too many logins: at most {LOGINS_PER_MINUTE} a minute")
            return
        sid = self.auth.login(name, secret)
        if sid is None:
            log.warning("operator login refused", extra={"user": name[:64], "client": h.client_address[0]})
            self._login_form(h, 401, "login refused")
            return
        log.info("operator logged in", extra={"user": name, "client": h.client_address[0]})
        cookie = f"{COOKIE}={sid}; Path={PREFIX}; HttpOnly; SameSite=Strict"
        self._send(h, 303, b"", "text/plain", {"Location": PREFIX, "Set-Cookie": cookie})

    # ----- the page -----------------------------------------------------------------------------------
    def _page(self, h: BaseHTTPRequestHandler, user: str) -> None:
        cams = "\n".join(
            f'<section class="camera" data-camera="{html.escape(c.name)}"><h2>{html.escape(c.name)}</h2>'
            f'<div class="frame"><img class="heatmap" alt="latest frame of {html.escape(c.name)}"></div>'
            '<p class="verdict">waiting for frames</p><p class="score"></p><p class="model"></p>'
            '<div class="actions"><button data-kind="false_alarm">false alarm: part is good</button>'
            '<button data-kind="missed">missed: part is bad</button></div><p class="counters"></p></section>'
            for c in self.state.rt.cameras
        )
        rows = "\n".join(_model_row(m) for m in self.state.models())
        page = Template(_static("page.html").decode()).substitute(
            user=html.escape(user), cameras=cams, models=rows, gallery_size=self.cfg.gallery
        )
        self._send(h, 200, page.encode(), "text/html; charset=utf-8")

    def _events(self, h: BaseHTTPRequestHandler) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-store")
        h.end_headers()
        with self._viewers_lock:
            self.viewers += 1
        seen, min_gap = -1, 1.0 / self.cfg.max_fps
        try:
            while not self.stopping.is_set():
                started = time.monotonic()
                seen = self.live.wait(seen, 1.0)
                if self.stopping.is_set():
                    break
                h.wfile.write(b"data: " + json.dumps(self.state.snapshot()).encode() + b"\n\n")
                h.wfile.flush()
                self.stopping.wait(max(0.0, min_gap - (time.monotonic() - started)))
        except (BrokenPipeError, ConnectionResetError, OSError):
            pass
        finally:
            with self._viewers_lock:
                self.viewers -= 1

    # ----- feedback -----------------------------------------------------------------------------------
    def _feedback(self, h: BaseHTTPRequestHandler, user: str) -> None:
        entry: dict[str, Any] = {"user": user, "client": h.client_address[0]}
        try:
            if h.headers.get("X-Linewatch-Feedback") != "1":
                raise FeedbackError("missing the X-Linewatch-Feedback header", 403)
            try:
                doc = json.loads(self._read_body(h) or b"{}")
                kind, camera, frame_id = doc["kind"], str(doc["camera"]), int(doc["frame_id"])
            except (ValueError, KeyError, TypeError):
                raise FeedbackError("expected JSON {kind, camera, frame_id}") from None
            if kind not in KINDS:
                raise FeedbackError(f"kind must be one of {list(KINDS)}")
            entry.update(action=kind, camera=camera, frame_id=frame_id)
            if not self.limiter.allow(user):
                raise FeedbackError(f"rate limit: at most {self.cfg.feedback_per_minute} a minute", 429)
            shown = self.live.find(camera, frame_id)
            if shown is None:
                raise FeedbackError("that frame is no longer held by the edge", 410)
            entry.update(model=shown.model, task=shown.task, score=round(shown.score, 5),
                         threshold=shown.threshold, anomalous=shown.anomalous)  # fmt: skip
            entry["file"] = self.feedback.write(kind, shown)
            entry["outcome"] = "filed"
        except FeedbackError as exc:
            entry.update(outcome="refused", error=str(exc))
            self._audit(entry)
            self._json(h, exc.status, {"error": str(exc)})
            return
        self._audit(entry)
        log.info("operator feedback", extra={k: entry[k] for k in ("user", "action", "camera", "frame_id")})
        self._json(h, 200, {"filed": entry["file"], "action": entry["action"]})

    def _audit(self, entry: dict[str, Any]) -> None:
        try:
            self.feedback.audit(entry)
        except OSError:
            log.exception("operator audit log not written", extra={"entry": json.dumps(entry)})
