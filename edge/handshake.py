"""The PLC trigger handshake of a triggered camera: trigger -> frame -> results-ready + OK/NG -> ack.

Why a state machine of its own: on a triggered station the PLC, not the camera, decides which frame
counts, and it must get exactly one answer per trigger, held until it says it has read it. So:

    idle --trigger(recipe)--> armed --first frame--> busy --verdict--> ready --ack--> idle

- a trigger is accepted only in ``idle``; in any other state it is refused with the reason ("busy":
  armed, scoring, or a result not yet acknowledged) and nothing changes (counted: ``refused``);
- while not ``armed`` a frame is not scored: counted as ``untriggered`` and reported, never silently
  dropped; the first frame after the trigger is the one scored;
- no frame (or no verdict) within ``timeout_s`` of the trigger is a missed trigger: counted, the
  reason kept in ``error``, back to ``idle``;
- the result (OK/NG, region count, score, frame id, recipe) stays until ``ack``.

The trigger can come from an MQTT command (``cmd/trigger``, ``cmd/ack``), a Sparkplug DCMD, an OPC
UA write or method, or a digital input: all call ``trigger()`` and ``ack()``. Listeners (the MQTT
retained ``handshake`` topic, OPC UA variables) are told after every change, outside the lock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

STATES = ("idle", "armed", "busy", "ready")


class HandshakeError(RuntimeError):
    """A trigger or acknowledgement refused in the current state; nothing was changed."""


class TriggerGate:
    """One camera's handshake. Thread-safe: capture, postprocess, MQTT and OPC UA threads call it."""

    def __init__(self, camera: str, timeout_s: float = 5.0, recipes: int | None = None) -> None:
        self.camera, self.timeout_s, self.recipes = camera, timeout_s, recipes
        self.state = "idle"
        self.trigger_id = 0
        self.recipe: int | None = None
        self.source: str | None = None
        self.result: dict[str, Any] | None = None  # the held result (ready), or None
        self.error: str | None = None  # why the last trigger ended without a result
        self.counters = {"triggers": 0, "refused": 0, "missed": 0, "untriggered": 0, "acks": 0}
        self._since = 0.0  # monotonic time of the trigger
        self._frame: Any = None  # the frame the trigger took
        self._lock = threading.Lock()
        self.listeners: list[Callable[[dict[str, Any]], None]] = []
        self._told = dict(self.counters)  # the counters listeners last saw

    # ----- the PLC side ---------------------------------------------------------------------------
    def trigger(self, recipe: int = 0, source: str = "callback") -> int:
        """Arm for the next frame; returns the trigger id. Raises HandshakeError when not idle."""
        with self._lock:
            self._expire()
            if self.recipes is not None and not 0 <= recipe < self.recipes:
                self.counters["refused"] += 1
                raise HandshakeError(f"recipe {recipe} out of range: the model knows {self.recipes}")
            if self.state != "idle":
                self.counters["refused"] += 1
                what = "a result is waiting for its ack" if self.state == "ready" else f"busy ({self.state})"
                raise HandshakeError(f"trigger refused: {what}, trigger {self.trigger_id}")
            self.trigger_id += 1
            self.counters["triggers"] += 1
            self.state, self.recipe, self.source = "armed", recipe, source
            self.result, self.error, self._since, self._frame = None, None, time.monotonic(), None
            tid = self.trigger_id
        self._changed()
        return tid

    def ack(self, trigger_id: int | None = None) -> dict[str, Any]:
        """The PLC has read the result: release it. Raises HandshakeError when there is none."""
        with self._lock:
            if self.state != "ready":
                self.counters["refused"] += 1
                raise HandshakeError(f"nothing to acknowledge (state {self.state})")
            if trigger_id is not None and trigger_id != self.trigger_id:
                self.counters["refused"] += 1
                raise HandshakeError(f"the held result is trigger {self.trigger_id}, not {trigger_id}")
            result = dict(self.result or {})
            self.state, self.result = "idle", None
            self.counters["acks"] += 1
        self._changed()
        return result

    # ----- the pipeline side ----------------------------------------------------------------------
    def admit(self, frame: Any) -> bool:
        """Capture: True for the frame the armed trigger takes; False (counted) for any other."""
        with self._lock:
            expired = self._expire()
            if self.state == "armed":
                self.state, self._frame = "busy", frame
            else:
                self.counters["untriggered"] += 1
            admitted = self._frame is frame and self.state == "busy"
        if admitted or expired:
            self._changed()
        return admitted

    def complete(self, frame: Any, anomalous: bool, regions: int, score: float) -> None:
        """Postprocess: the verdict of the triggered frame; held until ``ack``."""
        with self._lock:
            if self.state != "busy" or self._frame is not frame:
                return  # a verdict that came after its trigger expired: already counted as missed
            self.state, self._frame = "ready", None
            self.result = {
                "trigger_id": self.trigger_id, "recipe": self.recipe, "frame_id": frame.frame_id,
                "ok": not anomalous, "regions": regions, "score": round(score, 6),
            }  # fmt: skip
        self._changed()

    def tick(self) -> None:
        """Periodic: expire a trigger that got no frame or no verdict in time, and report frames that
        came with no trigger (counted per frame, told once per tick: a free-running camera must not
        flood the handshake topic)."""
        with self._lock:
            expired = self._expire()
            untold = self.counters != self._told
        if expired or untold:
            self._changed()

    def _expire(self) -> bool:
        """Caller holds the lock."""
        if self.state in ("armed", "busy") and time.monotonic() - self._since > self.timeout_s:
            waited = "no frame" if self.state == "armed" else "no verdict"
            self.error = f"trigger {self.trigger_id} missed: {waited} within {self.timeout_s} s"
            self.counters["missed"] += 1
            self.state, self._frame = "idle", None
            return True
        return False

    # ----- what the listeners see ---------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "camera": self.camera, "state": self.state, "results_ready": self.state == "ready",
                "trigger_id": self.trigger_id, "recipe": self.recipe, "source": self.source,
                "result": dict(self.result) if self.result else None, "error": self.error,
                "counters": dict(self.counters),
            }  # fmt: skip

    def _changed(self) -> None:
        snap = self.snapshot()
        self._told = snap["counters"]
        for listener in list(self.listeners):
            listener(snap)
