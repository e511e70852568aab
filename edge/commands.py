"""Inbound commands on ``<root>/cmd/<verb>``: reload, set-threshold, snapshot, onboard.

Parsing (JSON here, Sparkplug DCMD metrics in ``edge/publish/sparkplug/commands.py``) is kept apart
from executing (``CommandHandler.execute``), so both payload modes run the same three commands, and
a request checked against the same JSON Schema, with only the way the answer travels differing.

Every request gets exactly one response: on ``<root>/cmd/<verb>/response``, or on the MQTT 5
response topic of the request (with its correlation data echoed). A request is parsed and validated
against its JSON Schema (``edge/schemas/cmd_*.json``) BEFORE anything is touched, so a malformed
payload is answered with an error and changes nothing. Which users may send commands is the broker
ACL's business (deploy/).
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from functools import partial
from typing import Any, Protocol

import jsonschema

from linewatch.edge.handshake import HandshakeError
from linewatch.edge.inference.postprocess import frame_jpeg, overlay_jpeg
from linewatch.edge.observability.logs import RepeatLimiter
from linewatch.edge.publish import payloads
from linewatch.edge.publish.mqtt import response_properties

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)  # a client sending malformed commands in a loop must not flood the log

VERBS = {
    "reload": "cmd_reload",
    "set-threshold": "cmd_set_threshold",
    "snapshot": "cmd_snapshot",
    "trigger": "cmd_trigger",  # the PLC handshake of a triggered camera (edge/handshake.py)
    "ack": "cmd_ack",
    "onboard": "cmd_onboard",  # learn or remove a part on the box (edge/onboard/)
}
MAX_PAYLOAD = 64 * 1024
MAX_PAYLOADS = {"onboard": 24 * 1024 * 1024}  # up to 8 base64 JPEGs


class CommandError(ValueError):
    """A request that cannot be executed; the message goes back to the sender."""


def _reject_constant(name: str) -> Any:
    raise CommandError(f"{name} is not valid JSON")


def parse_command(verb: str, raw: bytes) -> dict[str, Any]:
    """Decode and validate one request; raise CommandError with a message fit for the reply."""
    if verb not in VERBS:
        raise CommandError(f"unknown command {verb!r}; known: {sorted(VERBS)}")
    limit = MAX_PAYLOADS.get(verb, MAX_PAYLOAD)
    if len(raw) > limit:
        raise CommandError(f"payload too large ({len(raw)} bytes, max {limit})")
    if not raw.strip():
        request: Any = {}
    else:
        try:
            request = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
        except UnicodeDecodeError as exc:
            raise CommandError(f"payload is not UTF-8: {exc}") from exc
        except RecursionError as exc:
            raise CommandError("payload nests too deeply") from exc
        except json.JSONDecodeError as exc:
            raise CommandError(f"payload is not JSON: {exc}") from exc
    if not isinstance(request, dict):
        raise CommandError(f"payload must be a JSON object, got {type(request).__name__}")
    try:
        payloads.validate(VERBS[verb], request)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "payload"
        raise CommandError(f"{where}: {exc.message}") from exc
    return request


def _request_id(raw: bytes) -> str | None:
    """Best effort: echo the id of a malformed request so the sender can correlate the error."""
    try:
        doc = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    value = doc.get("id") if isinstance(doc, dict) else None
    return value if isinstance(value, str) and len(value) <= 200 else None


class Reply(Protocol):
    def __call__(self, error: str | None = None, result: dict[str, Any] | None = None) -> None: ...


def _snapshot_topic(camera: Any, jpeg: bytes) -> str:
    """JSON mode: the snapshot JPEG goes to ``<root>/snapshot``."""
    topic = camera.topic("snapshot")
    camera.link.send(topic, jpeg, qos=1)
    return topic


class CommandHandler:
    """Executes commands for the runtime. Called on a camera's MQTT thread: must not block."""

    def __init__(
        self,
        reload: Callable[[str | None], dict[str, Any]],
        counters: dict[str, int] | None = None,
        onboard: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        """``reload(path)`` swaps the model and returns the response's result (raises on failure);
        ``onboard(request)`` learns or removes a part and swaps the new version in (same contract)."""
        self._reload = reload
        self._onboard = onboard
        self._onboarding = threading.Lock()  # one onboarding at a time, whichever camera asked
        self.counters = counters if counters is not None else {"ok": 0, "error": 0}

    def handle(self, camera: Any, verb: str, raw: bytes, properties: Any) -> None:
        """A JSON request from ``<root>/cmd/<verb>``: parse, execute, answer on the response topic."""
        try:
            request = parse_command(verb, raw)
        except CommandError as exc:
            limited.warning("command refused", camera.name, camera=camera.name, verb=verb, error=str(exc))
            self._respond(camera, verb, _request_id(raw), properties, error=str(exc))
            return
        self.execute(
            camera, verb, request, partial(self._respond, camera, verb, request.get("id"), properties)
        )

    def execute(
        self,
        camera: Any,
        verb: str,
        request: dict[str, Any],
        reply: Reply,
        snapshot_to: Callable[[bytes], str] | None = None,
    ) -> None:
        """Run a validated request; ``reply(error=..., result=...)`` is called exactly once.

        ``snapshot_to(jpeg)`` publishes a snapshot and says where (default: ``<root>/snapshot``).
        """
        if verb == "set-threshold":
            camera.threshold = float(request["threshold"])
            camera.link.publish_status()
            log.info("threshold changed", extra={"camera": camera.name, "threshold": camera.threshold})
            reply(result={"threshold": camera.threshold})
        elif verb == "snapshot":
            self._snapshot(camera, request, reply, snapshot_to or partial(_snapshot_topic, camera))
        elif verb == "onboard":
            if self._onboard is None:
                reply(error="onboarding is not available here")
            elif not self._onboarding.acquire(blocking=False):
                reply(error="an onboarding is already running")
            else:
                threading.Thread(
                    target=self._do_onboard, args=(request, reply), name="cmd-onboard", daemon=True
                ).start()
        elif verb == "reload":
            # Verification + golden samples + warm-up take seconds: never on the MQTT thread.
            threading.Thread(
                target=self._do_reload, args=(request, reply), name="cmd-reload", daemon=True
            ).start()
        elif verb in ("trigger", "ack"):
            self._handshake(camera, verb, request, reply)
        else:
            reply(error=f"unknown command {verb!r}")

    def _handshake(self, camera: Any, verb: str, request: dict[str, Any], reply: Reply) -> None:
        gate = getattr(camera, "gate", None)
        if gate is None:
            reply(error=f"camera {camera.name!r} is not triggered (add it to [trigger] cameras)")
            return
        try:
            if verb == "trigger":
                tid = gate.trigger(int(request.get("recipe", 0)), source="mqtt")
                reply(result={"trigger_id": tid, "recipe": int(request.get("recipe", 0))})
            else:
                reply(result=gate.ack(request.get("trigger_id")))
        except HandshakeError as exc:
            limited.warning("handshake refused", camera.name, camera=camera.name, error=str(exc))
            reply(error=str(exc))

    def _snapshot(
        self, camera: Any, request: dict[str, Any], reply: Reply, publish: Callable[[bytes], str]
    ) -> None:
        latest = camera.latest
        if latest is None:
            reply(error="no frame has been scored yet")
            return
        frame, amap, frame_id = latest
        use_overlay = bool(request.get("overlay", False)) and amap is not None
        jpeg = overlay_jpeg(frame.image, amap) if use_overlay else frame_jpeg(frame.image)
        topic = publish(jpeg)
        reply(result={"frame_id": frame_id, "topic": topic, "bytes": len(jpeg), "overlay": use_overlay})

    def _do_reload(self, request: dict[str, Any], reply: Reply) -> None:
        try:
            result = self._reload(request.get("bundle"))
        except Exception as exc:
            reply(error=str(exc))
            return
        reply(result=result)

    def _do_onboard(self, request: dict[str, Any], reply: Reply) -> None:
        try:
            assert self._onboard is not None
            result = self._onboard(request)
        except Exception as exc:
            log.warning("onboarding refused", extra={"task": request.get("task"), "error": str(exc)})
            reply(error=str(exc))
            return
        finally:
            self._onboarding.release()
        reply(result=result)

    def _respond(
        self,
        camera: Any,
        verb: str,
        request_id: str | None,
        properties: Any,
        error: str | None = None,
        result: dict[str, Any] | None = None,
    ) -> None:
        self.counters["error" if error is not None else "ok"] += 1
        body = payloads.response_payload(camera.name, verb, request_id, error is None, error, result)
        topic, props = response_properties(properties)
        if not topic or any(c in topic for c in "+#"):
            topic, props = camera.topic(f"cmd/{verb}/response"), props
        camera.link.send(topic, payloads.dumps(body), qos=1, properties=props)
