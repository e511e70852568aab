"""Wiring and lifecycle of one edge process: model, cameras, stages, MQTT links, metrics, watchdog.

Start order makes the first published verdict a trustworthy one: the model is verified and proven
on its golden samples before any camera opens. Stop order drains instead of dropping: sources stop,
the queues empty through inference and post-processing into the outbox, each link delivers what it
can within the drain timeout and publishes its offline status, and only then does the process end.
Undelivered rows stay in the outbox for the next start.

Faults that last (broker away, disk full under the outbox, a camera stalling) are visible in three
places, each counting every event: the metrics topic and Prometheus (connect failures, disconnects,
outbox drops and unstored verdicts, source stalls), the retained status (an ``outbox`` object while
verdicts are dropped or lost, re-published when that changes) and ``/healthz`` detail. The log says
it too, rate-limited (``edge.observability.logs.RepeatLimiter``).
"""

from __future__ import annotations

import logging
import re
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

from linewatch.edge.capture.camera import Camera
from linewatch.edge.capture.queues import BoundedQueue
from linewatch.edge.commands import CommandHandler
from linewatch.edge.config import EdgeConfig
from linewatch.edge.frame_path import InferenceWorker, PostprocessWorker, Scored
from linewatch.edge.model.manager import LoadedModel, ModelManager
from linewatch.edge.observability import sdnotify
from linewatch.edge.observability.logs import RepeatLimiter
from linewatch.edge.observability.stats import STAGES
from linewatch.edge.observability.telemetry import MetricsServer, Telemetry
from linewatch.edge.operator.app import OperatorApp
from linewatch.edge.operator.live import LiveView
from linewatch.edge.publish import payloads
from linewatch.edge.publish.mqtt import MqttLink
from linewatch.edge.publish.outbox import Outbox

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

_CAMERA_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def camera_names(sources: list[str], names: list[str] | None) -> list[str]:
    """``--camera`` names in source order; missing ones default to cam0, cam1...; all must be unique."""
    names = list(names or [])
    if len(names) > len(sources):
        raise ValueError(f"{len(names)} --camera names for {len(sources)} sources")
    names += [f"cam{i}" for i in range(len(names), len(sources))]
    for name in names:
        if not _CAMERA_NAME.match(name):
            raise ValueError(
                f"camera name {name!r} must be 1-64 of [A-Za-z0-9_.-] (it is an MQTT topic level)"
            )
    if len(set(names)) != len(names):
        raise ValueError(f"camera names must be unique, got {names}")
    return names


class EdgeRuntime:
    """One running edge: ``start()``, then ``wait()`` or ``shutdown()``."""

    def __init__(
        self,
        cfg: EdgeConfig,
        bundle: Path | str,
        sources: list[str],
        cameras: list[str] | None = None,
        max_frames: int | None = None,
        backend_order: list[str] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("at least one --source is needed")
        self.cfg = cfg
        names = camera_names(sources, cameras)
        self.telemetry = Telemetry(cfg.metrics.window)
        self.outbox = Outbox(cfg.outbox.path, cfg.outbox.max_rows, cfg.outbox.synchronous)
        self.models = ModelManager(Path(bundle), cfg, self._model_changed, self._model_failed, backend_order)
        self.cameras = [
            Camera(name, cfg.topic.root(name), uri, cfg, self.outbox, max_frames)
            for name, uri in zip(names, sources, strict=True)
        ]
        self.by_name = {c.name: c for c in self.cameras}
        unknown = sorted(set(cfg.trigger.cameras) - set(self.by_name))
        if unknown:
            raise ValueError(f"[trigger] cameras {unknown} are not among the cameras {names}")
        self.results: BoundedQueue[Scored] = BoundedQueue(cfg.queues.results, cfg.queues.results_policy)
        self.commands = CommandHandler(self._reload, onboard=self._onboard)
        self.inference = InferenceWorker(self.cameras, self.models, self.results, cfg, self.telemetry)
        self.postprocess = PostprocessWorker(
            self.by_name, self.results, self.outbox, cfg, self.telemetry, self.models
        )
        self.sparkplug: Any = None  # SparkplugEdge in mqtt.payload = "sparkplug" mode
        if cfg.mqtt.payload == "sparkplug":
            from linewatch.edge.publish.sparkplug.wiring import SparkplugEdge  # protobuf: [sparkplug] extra

            self.sparkplug = SparkplugEdge(self)
            self.postprocess.encode = self.sparkplug.result_rows
        self.opcua: Any = None  # OpcUaServer when [opcua] enabled
        self.server: MetricsServer | None = None
        self.operator: OperatorApp | None = None
        self.stopping = threading.Event()
        self._stopped = False
        self._started = False
        self._loop_thread = threading.Thread(target=self._periodic, name="metrics", daemon=True)
        self._last_metrics = time.monotonic()
        self._outbox_seen: dict[str, Any] | None = None  # the outbox state last put on the status

    # ----- lifecycle ----------------------------------------------------------------------------
    def start(self) -> None:
        """Load and prove the model (raises when it cannot), then start every thread."""
        model = self.models.load_initial()
        self._started = True
        self.telemetry.set_model(model.name, model.version, model.backend_name)
        for cam in self.cameras:
            if cam.gate is not None:
                cam.gate.recipes = max(1, len(model.bundle.tasks))
                cam.gate.listeners.append(partial(self._handshake_changed, cam))
        for cam in [] if self.sparkplug else self.cameras:
            cam.link = MqttLink(
                self.cfg.mqtt,
                cam.name,
                cam.root,
                self.outbox,
                status=partial(self._status, cam),
                on_command=partial(self._command, cam),
                on_delivered=partial(self._delivered, cam),
            )
            cam.link.start()
        if self.sparkplug:
            self.sparkplug.start()
        for cam in self.cameras:
            if cam.gate is not None:
                self._handshake_changed(cam, cam.gate.snapshot())  # the retained idle state
        if self.cfg.opcua.enabled:
            from linewatch.edge.publish.opcua_server import OpcUaServer  # asyncua: [opcua] extra

            self.opcua = OpcUaServer(self.cfg.opcua, self.cameras)
            self.opcua.start()
            self.postprocess.on_verdict = self.opcua.verdict
            self._opcua_state()
        self.postprocess.start()
        self.inference.start()
        for cam in self.cameras:
            cam.source.start()
        self.models.start_watching()
        if self.cfg.metrics.port is not None:
            live = LiveView(self.cfg.operator.gallery)
            self.operator = OperatorApp(self.cfg.operator, self, live, self.cfg.operator.refresh_log)
            self.operator.state.model_swapped(model.name, model.version, model.backend_name)
            self.postprocess.live = live if self.operator.auth.enabled else None
            self.server = MetricsServer(
                self.telemetry, self.cfg.metrics.host, self.cfg.metrics.port, self.healthy,
                self.operator.handle,
            )  # fmt: skip
            self.server.start()
        self._loop_thread.start()
        sdnotify.notify(f"READY=1\nSTATUS=serving {model.name} v{model.version} on {model.backend_name}")
        log.info(
            "edge running",
            extra={
                "cameras": ",".join(c.name for c in self.cameras),
                "model": model.name,
                "version": model.version,
            },
        )

    def sources_finished(self) -> bool:
        return all(c.source.finished.is_set() for c in self.cameras)

    def wait(self, stop: threading.Event | None = None, poll: float = 0.2) -> None:
        """Block until ``stop`` is set or every source has finished (file end, --max-frames)."""
        while not (stop is not None and stop.is_set()) and not self.stopping.is_set():
            if self.sources_finished():
                break
            time.sleep(poll)

    def shutdown(self) -> None:
        """Graceful stop: drain queues into the outbox, flush the outbox, publish offline status."""
        if self._stopped:
            return
        self._stopped = True
        self.stopping.set()
        if not self._started:  # the model never loaded: nothing runs, nothing to drain
            self.models.stop()
            self.outbox.close()
            return
        sdnotify.notify("STOPPING=1")
        for cam in self.cameras:
            cam.source.stop()
        for cam in self.cameras:
            cam.source.join(15)
            cam.queue.close()
        self.inference.signal.set()
        self.inference.join(60)
        self.postprocess.join(60)
        for cam in self.cameras:
            if cam.link is not None:
                cam.link.stop(self.cfg.outbox.drain_timeout_s)
        for cam in self.cameras:
            if cam.link is not None:
                cam.link.join(self.cfg.outbox.drain_timeout_s + 10)
        if self._loop_thread.is_alive():
            self._loop_thread.join(5)
        self.models.stop()
        if self.opcua is not None:
            self.opcua.stop()
        if self.operator is not None:
            self.operator.stop()
        if self.server is not None:
            self.server.stop()
        left = self.outbox.depth()
        self.outbox.close()
        log.info("edge stopped", extra={"outbox_left": left})

    # ----- callbacks ------------------------------------------------------------------------------
    def _status(self, cam: Camera, state: str) -> dict[str, Any]:
        model = self.models.loaded
        return payloads.status_payload(
            cam.name,
            state,
            model.ref() if model else None,
            model.backend_name if model else None,
            error=self.models.last_error,
            threshold=cam.threshold,
            outbox=self.outbox_state(),
        )

    def outbox_state(self) -> dict[str, Any] | None:
        """What the status says about the outbox: None while nothing was dropped or lost."""
        box = self.outbox
        if not (box.dropped or box.not_stored or box.last_error):
            return None
        state: dict[str, Any] = {
            "dropped": box.dropped,
            "not_stored": box.not_stored,
            "disk_full": box.disk_full,
        }
        if box.last_error:
            state["error"] = box.last_error
        return state

    def _opcua_state(self) -> None:
        if self.opcua is None:
            return
        error = self.models.last_error
        for cam in self.cameras:
            self.opcua.state(cam, self.models.loaded, f"error: {error}" if error else "online")

    def _model_changed(self, model: LoadedModel) -> None:
        self.telemetry.set_model(model.name, model.version, model.backend_name)
        self._opcua_state()
        if self.operator is not None:
            self.operator.state.model_swapped(model.name, model.version, model.backend_name)
        for cam in self.cameras:
            if cam.link is not None:
                cam.link.publish_status()

    def _model_failed(self, error: str) -> None:
        self.telemetry.reload_failures.set(self.models.reload_failures)
        for cam in self.cameras:
            if cam.link is not None:
                cam.link.publish_status()

    def _reload(self, path: str | None) -> dict[str, Any]:
        model = self.models.reload(path)
        return {"model": model.ref(), "backend": model.backend_name, "golden": model.report.as_dict()}

    def _onboard(self, request: dict[str, Any]) -> dict[str, Any]:
        """cmd/onboard: a new version in the store, swapped in here; on failure `current` goes back."""
        from linewatch.contract.store import point_current, store_target
        from linewatch.edge.onboard.service import run_request

        store = self.models.store
        if store is None:
            raise ValueError("onboarding needs the edge to run on a bundle store (--bundle STORE)")
        previous = store_target(store)
        done = run_request(store, self.cfg, request)
        try:
            model = self.models.reload(done.path)
        except Exception:
            point_current(store, previous.name)
            raise
        return {**done.as_dict(), "model": model.ref(), "golden": model.report.as_dict()}

    def _command(self, cam: Camera, verb: str, raw: bytes, properties: Any) -> None:
        self.commands.handle(cam, verb, raw, properties)

    def _handshake_changed(self, cam: Camera, snapshot: dict[str, Any]) -> None:
        """A triggered camera's handshake moved: retained ``<root>/handshake`` (JSON) or metrics."""
        if cam.link is None:
            return
        if self.sparkplug is not None:
            cam.link.publish_status()
            return
        body = payloads.dumps(payloads.handshake_payload(snapshot))
        cam.link.send(cam.topic("handshake"), body, qos=1, retain=True)

    def _delivered(self, cam: Camera, row_id: int) -> None:
        mark = cam.marks.pop(row_id, None)
        if mark is None:
            return
        now = time.perf_counter()
        self.telemetry.observe(cam.name, "publish", (now - mark[1]) * 1000.0)
        self.telemetry.observe(cam.name, "end_to_end", (now - mark[0]) * 1000.0)

    # ----- health, metrics, watchdog ------------------------------------------------------------------
    def healthy(self) -> tuple[bool, dict[str, Any]]:
        model = self.models.loaded
        backlog = any(len(c.queue) for c in self.cameras)
        stalled = backlog and time.monotonic() - self.inference.last_progress > self.cfg.watchdog.stall_s
        ok = model is not None and self.inference.alive and self.postprocess.alive and not stalled
        detail = {
            "model": model.ref() if model else None,
            "backend": model.backend_name if model else None,
            "inference_alive": self.inference.alive,
            "postprocess_alive": self.postprocess.alive,
            "stalled": stalled,
            "mqtt_connected": {c.name: bool(c.link and c.link.connected.is_set()) for c in self.cameras},
            # a full disk is reported, not "unhealthy": a watchdog restart would not free the disk
            "outbox": self.outbox_state() or {"dropped": 0, "not_stored": 0, "disk_full": False},
        }
        return ok, detail

    def metrics_payload(self, cam: Camera, period: float) -> dict[str, Any]:
        windows = self.telemetry.camera(cam.name)
        fps, frames = windows.fps.rate()
        _, anomalies = windows.anomalies.rate()
        model = self.models.loaded
        link = cam.link
        stats = cam.source.stats
        return {
            "schema": payloads.METRICS,
            "ts": payloads.utc_iso(),
            "camera": cam.name,
            "period_s": round(period, 3),
            "fps": round(fps, 3),
            "frames": frames,
            "latency_ms": {s: windows.stages[s].percentiles() for s in STAGES},
            "queue_depth": {"frames": len(cam.queue), "results": len(self.results)},
            "drops": {
                "frames": cam.queue.dropped,
                "results": self.results.dropped,
                "outbox": self.outbox.dropped,
                "outbox_not_stored": self.outbox.not_stored,
            },
            "outbox_healthy": self.outbox.healthy,
            "anomaly_rate": round(anomalies / frames, 4) if frames else 0.0,
            "reconnects": link.stats.reconnects if link else 0,
            "connect_failures": link.stats.connect_failures if link else 0,
            "outbox_depth": self.outbox.depth(cam.name),
            "bad_frames": dict(stats.bad_frames),
            "source_reopens": stats.reopens,
            "source_stalls": stats.stalls,
            "model": model.ref() if model else None,
            "backend": model.backend_name if model else None,
            "reload_failures": self.models.reload_failures,
        }

    def _export_gauges(self, cam: Camera, body: dict[str, Any]) -> None:
        t = self.telemetry
        t.fps.labels(cam.name).set(body["fps"])
        t.anomaly_rate.labels(cam.name).set(body["anomaly_rate"])
        t.queue_depth.labels(f"frames:{cam.name}").set(len(cam.queue))
        t.drops.labels(f"frames:{cam.name}").set(cam.queue.dropped)
        t.reconnects.labels(cam.name).set(body["reconnects"])
        t.connected.labels(cam.name).set(1 if cam.link and cam.link.connected.is_set() else 0)
        t.reopens.labels(cam.name).set(cam.source.stats.reopens)
        t.stalls.labels(cam.name).set(cam.source.stats.stalls)
        if cam.link is not None:
            t.connect_failures.labels(cam.name).set(cam.link.stats.connect_failures)
            t.disconnects.labels(cam.name).set(cam.link.stats.disconnects)
        for reason, n in cam.source.stats.bad_frames.items():
            t.bad_frames.labels(cam.name, reason).set(n)

    def publish_metrics(self) -> None:
        now = time.monotonic()
        period, self._last_metrics = now - self._last_metrics, now
        for cam in self.cameras:
            body = self.metrics_payload(cam, period)
            self._export_gauges(cam, body)
            if cam.link is not None and self.sparkplug is None:
                cam.link.send(cam.topic("metrics"), payloads.dumps(body), qos=0)
        if self.sparkplug is not None and self.sparkplug.link is not None:
            self.sparkplug.link.publish_status()  # counters, latencies, outbox: by exception
        t = self.telemetry
        t.queue_depth.labels("results").set(len(self.results))
        t.drops.labels("results").set(self.results.dropped)
        t.outbox_depth.set(self.outbox.depth())
        t.outbox_dropped.set(self.outbox.dropped)
        t.outbox_not_stored.set(self.outbox.not_stored)
        t.outbox_healthy.set(1 if self.outbox.healthy else 0)
        state = self.outbox_state()
        if state != self._outbox_seen:  # verdicts started to drop or be lost, or the disk recovered
            self._outbox_seen = state
            for cam in self.cameras:
                if cam.link is not None:
                    cam.link.publish_status()
        t.reload_failures.set(self.models.reload_failures)
        self._opcua_state()

    def _periodic(self) -> None:
        watchdog = sdnotify.watchdog_interval() if self.cfg.watchdog.enabled else None
        tick = min(self.cfg.metrics.period_s, watchdog or self.cfg.metrics.period_s, 1.0)
        next_metrics = time.monotonic() + self.cfg.metrics.period_s
        while not self.stopping.wait(tick):
            for cam in self.cameras:
                if cam.gate is not None:
                    cam.gate.tick()  # a trigger with no frame or verdict in time is a missed one
            if watchdog is not None and self.healthy()[0]:
                sdnotify.notify("WATCHDOG=1")
            if time.monotonic() >= next_metrics:
                next_metrics += self.cfg.metrics.period_s
                try:
                    self.publish_metrics()
                except Exception:
                    limited.log(logging.ERROR, "metrics publication failed", exc_info=True)
