"""Inbound commands on ``<root>/cmd/<verb>``: reload, set-threshold, snapshot, onboard.

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
from typing import Any

import jsonschema

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
    "onboard": "cmd_onboard",
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
        try:
            request = parse_command(verb, raw)
        except CommandError as exc:
            limited.warning("command refused", camera.name, camera=camera.name, verb=verb, error=str(exc))
            self._respond(camera, verb, _request_id(raw), properties, error=str(exc))
            return
        request_id = request.get("id")
        if verb == "set-threshold":
            camera.threshold = float(request["threshold"])
            camera.link.publish_status()
            log.info("threshold changed", extra={"camera": camera.name, "threshold": camera.threshold})
            self._respond(camera, verb, request_id, properties, result={"threshold": camera.threshold})
        elif verb == "snapshot":
            self._snapshot(camera, request, properties)
        elif verb == "onboard":
            if self._onboard is None:
                self._respond(camera, verb, request_id, properties, error="onboarding is not available here")
            elif not self._onboarding.acquire(blocking=False):
                self._respond(camera, verb, request_id, properties, error="an onboarding is already running")
            else:
                threading.Thread(
                    target=self._do_onboard,
                    args=(camera, request, properties),
                    name="cmd-onboard",
                    daemon=True,
                ).start()
        elif verb == "reload":
            # Verification + golden samples + warm-up take seconds: never on the MQTT thread.
            threading.Thread(
                target=self._do_reload, args=(camera, request, properties), name="cmd-reload", daemon=True
            ).start()

    def _snapshot(self, camera: Any, request: dict[str, Any], properties: Any) -> None:
        latest = camera.latest
        if latest is None:
            self._respond(
                camera, "snapshot", request.get("id"), properties, error="no frame has been scored yet"
            )
            return
        frame, amap, frame_id = latest
        use_overlay = bool(request.get("overlay", False)) and amap is not None
        jpeg = overlay_jpeg(frame.image, amap) if use_overlay else frame_jpeg(frame.image)
        topic = camera.topic("snapshot")
        camera.link.send(topic, jpeg, qos=1)
        result = {"frame_id": frame_id, "topic": topic, "bytes": len(jpeg), "overlay": use_overlay}
        self._respond(camera, "snapshot", request.get("id"), properties, result=result)

    def _do_reload(self, camera: Any, request: dict[str, Any], properties: Any) -> None:
        try:
            result = self._reload(request.get("bundle"))
        except Exception as exc:
            self._respond(camera, "reload", request.get("id"), properties, error=str(exc))
            return
        self._respond(camera, "reload", request.get("id"), properties, result=result)

    def _do_onboard(self, camera: Any, request: dict[str, Any], properties: Any) -> None:
        try:
            assert self._onboard is not None
            result = self._onboard(request)
        except Exception as exc:
            log.warning("onboarding refused", extra={"task": request.get("task"), "error": str(exc)})
            self._respond(camera, "onboard", request.get("id"), properties, error=str(exc))
            return
        finally:
            self._onboarding.release()
        self._respond(camera, "onboard", request.get("id"), properties, result=result)

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
