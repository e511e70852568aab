"""Confirmation that the edge actually serves a given model version.

Publishing only repoints a symlink; the edge then loads the bundle, checks hashes,
signature and golden samples, warms up, and only then swaps. Its retained `status`
message (`{"state": "online", "model": {"name", "version"}, "backend"}`) is the one
place that says the swap happened, so the refresh job waits for it and rolls back
when it does not come.
"""

from __future__ import annotations

import json
import secrets
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt

from linewatch.deploy.refresh.config import MqttConfig

__all__ = ["ConfirmResult", "make_client", "read_status", "wait_for_version"]


@dataclass
class ConfirmResult:
    ok: bool
    elapsed_s: float
    reason: str
    statuses: dict[str, Any] = field(default_factory=dict)  # last status payload per topic root

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "elapsed_s": round(self.elapsed_s, 3),
            "reason": self.reason,
            "statuses": self.statuses,
        }


def make_client(cfg: MqttConfig, purpose: str) -> mqtt.Client:
    """A paho 2.x client set up from the config (credentials, TLS); not yet connected."""
    _host, _port, tls, user, password = cfg.endpoint()
    client = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"{cfg.client_id_prefix}-{purpose}-{secrets.token_hex(4)}",
        protocol=mqtt.MQTTv311,
        clean_session=True,
    )
    if user:
        client.username_pw_set(user, password)
    if tls:
        client.tls_set(
            ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
            certfile=str(cfg.cert_file) if cfg.cert_file else None,
            keyfile=str(cfg.key_file) if cfg.key_file else None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    client.reconnect_delay_set(min_delay=1, max_delay=5)
    return client


def _status_topic(root: str) -> str:
    return f"{root.rstrip('/')}/status"


def _matches(payload: Any, name: str | None, version: int) -> bool:
    if not isinstance(payload, dict) or payload.get("state") != "online":
        return False
    model = payload.get("model")
    if not isinstance(model, dict) or model.get("version") != version:
        return False
    return name is None or model.get("name") in (None, name)


def _watch(cfg: MqttConfig, timeout_s: float, done: Any) -> tuple[dict[str, Any], str, float]:
    """Subscribe to every root's status until `done(statuses)` or timeout.

    Returns (statuses, connection problem or "", elapsed). Connects asynchronously
    and keeps retrying, so an edge box whose broker restarts along with the
    edge still gets confirmed within the timeout.
    """
    host, port, _tls, _user, _password = cfg.endpoint()
    topics = {_status_topic(root): root for root in cfg.topic_root}
    statuses: dict[str, Any] = {}
    problem = {"text": ""}
    lock = threading.Lock()
    finished = threading.Event()

    def on_connect(client: mqtt.Client, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            problem["text"] = f"broker {host}:{port} refused the connection: {reason}"
            return
        problem["text"] = ""
        client.subscribe([(topic, 1) for topic in topics])

    def on_connect_fail(_client: mqtt.Client, _ud: Any) -> None:
        problem["text"] = f"cannot reach broker {host}:{port}"

    def on_message(_client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        root = topics.get(msg.topic)
        if root is None:
            return
        try:
            payload: Any = json.loads(msg.payload.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            payload = {"unparseable": msg.payload[:200].decode("utf-8", "replace")}
        with lock:
            statuses[root] = payload
            if done(statuses):
                finished.set()

    client = make_client(cfg, "confirm")
    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_message = on_message
    start = time.monotonic()
    client.connect_async(host, port, keepalive=30)
    client.loop_start()
    try:
        finished.wait(timeout_s)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(statuses), problem["text"], time.monotonic() - start


def wait_for_version(
    cfg: MqttConfig, version: int, *, name: str | None = None, timeout_s: float | None = None
) -> ConfirmResult:
    """Wait until every configured topic root reports `online` with model `version`."""
    timeout = cfg.confirm_timeout_s if timeout_s is None else timeout_s
    roots = list(cfg.topic_root)

    def done(statuses: dict[str, Any]) -> bool:
        return all(_matches(statuses.get(root), name, version) for root in roots)

    statuses, problem, elapsed = _watch(cfg, timeout, done)
    if done(statuses):
        return ConfirmResult(True, elapsed, f"edge reports version {version} online", statuses)
    missing = [root for root in roots if not _matches(statuses.get(root), name, version)]
    seen = "; ".join(f"{root}: {statuses.get(root, 'no status message')}" for root in missing)
    reason = problem or f"no online status with version {version} within {timeout:g}s ({seen})"
    return ConfirmResult(False, elapsed, reason, statuses)


def read_status(cfg: MqttConfig, timeout_s: float = 3.0) -> dict[str, Any]:
    """The retained status of each topic root, as the broker holds it now (for `status --live`)."""
    roots = list(cfg.topic_root)
    statuses, problem, _ = _watch(cfg, timeout_s, lambda s: all(r in s for r in roots))
    if problem and not statuses:
        return {"error": problem}
    return statuses
