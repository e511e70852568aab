"""Who may look at the operator page and give feedback: token, basic auth, or a trusted proxy.

The default is closed: with no credential configured every request is refused (``OperatorConfig.
configured``). A browser logs in once through the form (name + token, or user + password) and gets a
random session id in an HttpOnly, SameSite=Strict cookie; scripts may send ``Authorization: Bearer``
or ``Basic`` on every request instead. Comparisons are constant-time (``hmac.compare_digest``).
Feedback is rate-limited per user so a stuck button or a script cannot flood the refresh drop folder.
"""

from __future__ import annotations

import base64
import hmac
import re
import secrets
import threading
import time
from collections import deque
from http.cookies import SimpleCookie

from linewatch.edge.config import OperatorConfig

COOKIE = "linewatch_operator"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@ -]{0,63}$")


def _same(given: str, expected: str | None) -> bool:
    return expected is not None and hmac.compare_digest(given.encode(), expected.encode())


def valid_name(name: str) -> bool:
    """Names go into the audit log and file names: a short, plain set of characters."""
    return bool(_NAME.match(name))


class Auth:
    """Checks requests against the configured credential and keeps browser sessions in memory."""

    def __init__(self, cfg: OperatorConfig) -> None:
        self.cfg = cfg
        self.token = cfg.resolved_token()
        self.password = cfg.resolved_password()
        self._sessions: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.cfg.configured

    def login(self, name: str, secret: str) -> str | None:
        """A session id for a valid login form, else None. With a token, ``name`` says who is acting."""
        name = name.strip()
        if not valid_name(name):
            return None
        ok = (self.token is not None and _same(secret, self.token)) or (
            self.cfg.username is not None and name == self.cfg.username and _same(secret, self.password)
        )
        if not ok:
            return None
        sid = secrets.token_urlsafe(32)
        with self._lock:
            now = time.time()
            self._sessions = {k: v for k, v in self._sessions.items() if v[1] > now}
            self._sessions[sid] = (name, now + self.cfg.session_hours * 3600.0)
        return sid

    def logout(self, cookie_header: str | None) -> None:
        sid = self._cookie(cookie_header)
        if sid:
            with self._lock:
                self._sessions.pop(sid, None)

    @staticmethod
    def _cookie(header: str | None) -> str | None:
        if not header:
            return None
        jar: SimpleCookie = SimpleCookie()
        try:
            jar.load(header)
        except Exception:
            return None
        morsel = jar.get(COOKIE)
        return morsel.value if morsel else None

    def user(self, headers: object, client_ip: str) -> str | None:
        """The user a request acts as, or None when it is not authenticated."""
        get = headers.get  # type: ignore[attr-defined]
        sid = self._cookie(get("Cookie"))
        if sid:
            with self._lock:
                entry = self._sessions.get(sid)
            if entry is not None and entry[1] > time.time():
                return entry[0]
        auth = get("Authorization") or ""
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and self.token is not None and _same(value.strip(), self.token):
            name = get("X-Linewatch-User") or "token"
            return name if valid_name(name) else "token"
        if scheme.lower() == "basic" and self.cfg.username is not None:
            try:
                user, _, password = base64.b64decode(value.strip()).decode().partition(":")
            except Exception:
                return None
            if user == self.cfg.username and _same(password, self.password):
                return user
        header = self.cfg.proxy_user_header
        if header and client_ip in self.cfg.proxy_from:
            name = (get(header) or "").strip()
            if valid_name(name):
                return name
        return None


class RateLimiter:
    """At most ``per_minute`` actions per user in any sliding minute."""

    def __init__(self, per_minute: int) -> None:
        self.per_minute = per_minute
        self._events: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def allow(self, user: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        with self._lock:
            events = self._events.setdefault(user, deque())
            while events and now - events[0] >= 60.0:
                events.popleft()
            if len(events) >= self.per_minute:
                return False
            events.append(now)
            return True
