"""Prometheus metrics and ``/healthz`` on one small HTTP server, plus per-camera latency windows.

A private CollectorRegistry (not prometheus-client's global one) lets several runtimes live in one
process (tests) and keeps exactly our metrics on the endpoint.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from linewatch.edge.observability.stats import STAGES, LatencyWindow, RateMeter

log = logging.getLogger(__name__)

BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30)


class CameraWindows:
    """p50/p99 windows per stage and the fps meter of one camera (for the metrics topic)."""

    def __init__(self, size: int) -> None:
        self.stages = {s: LatencyWindow(size) for s in STAGES}
        self.fps = RateMeter()
        self.anomalies = RateMeter()


class Telemetry:
    """Every Prometheus metric of the edge; stage latencies go to both Prometheus and the windows."""

    def __init__(self, window: int = 2048) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.window = window
        self.cameras: dict[str, CameraWindows] = {}
        self.frames = Counter("linewatch_edge_frames", "Frames scored", ["camera"], registry=r)
        self.anomalies = Counter(
            "linewatch_edge_anomalies", "Frames judged anomalous", ["camera"], registry=r
        )
        self.fps = Gauge(
            "linewatch_edge_fps", "Frames per second over the last metrics period", ["camera"], registry=r
        )
        self.anomaly_rate = Gauge(
            "linewatch_edge_anomaly_rate", "Anomalous share over the last period", ["camera"], registry=r
        )
        self.latency = Histogram(
            "linewatch_edge_stage_latency_seconds",
            "Per-stage latency",
            ["camera", "stage"],
            buckets=BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge(
            "linewatch_edge_queue_depth", "Items waiting in a queue", ["queue"], registry=r
        )
        self.drops = Gauge(
            "linewatch_edge_dropped", "Items dropped by a full queue (total)", ["queue"], registry=r
        )
        self.reconnects = Gauge(
            "linewatch_edge_mqtt_reconnects", "Broker reconnects (total)", ["camera"], registry=r
        )
        self.connected = Gauge(
            "linewatch_edge_mqtt_connected", "1 while connected to the broker", ["camera"], registry=r
        )
        self.outbox_depth = Gauge("linewatch_edge_outbox_depth", "Messages not yet acknowledged", registry=r)
        self.outbox_dropped = Gauge(
            "linewatch_edge_outbox_dropped", "Oldest outbox rows dropped when full", registry=r
        )
        self.outbox_not_stored = Gauge(
            "linewatch_edge_outbox_not_stored",
            "Messages the outbox could not write (disk full, I/O error): lost (total)",
            registry=r,
        )
        self.outbox_healthy = Gauge(
            "linewatch_edge_outbox_healthy", "0 while outbox writes fail (disk full)", registry=r
        )
        self.connect_failures = Gauge(
            "linewatch_edge_mqtt_connect_failures", "Failed broker connection attempts (total)", ["camera"],
            registry=r,
        )  # fmt: skip
        self.disconnects = Gauge(
            "linewatch_edge_mqtt_disconnects",
            "Established broker connections lost, keepalive timeouts included (total)",
            ["camera"],
            registry=r,
        )
        self.stalls = Gauge(
            "linewatch_edge_source_stalls", "Camera reads or opens that hung and were reopened (total)",
            ["camera"], registry=r,
        )  # fmt: skip
        self.bad_frames = Gauge(
            "linewatch_edge_bad_frames",
            "Frames skipped as unusable (total)",
            ["camera", "reason"],
            registry=r,
        )
        self.reopens = Gauge(
            "linewatch_edge_source_reopens", "Source reopens (total)", ["camera"], registry=r
        )
        self.model_version = Gauge(
            "linewatch_edge_model_version", "Version of the live model", ["model", "backend"], registry=r
        )
        self.reload_failures = Gauge(
            "linewatch_edge_model_reload_failures", "Refused bundles (total)", registry=r
        )

    def camera(self, name: str) -> CameraWindows:
        if name not in self.cameras:
            self.cameras[name] = CameraWindows(self.window)
        return self.cameras[name]

    def observe(self, camera: str, stage: str, ms: float) -> None:
        self.camera(camera).stages[stage].add(ms)
        self.latency.labels(camera, stage).observe(ms / 1000.0)

    def set_model(self, name: str, version: int, backend: str) -> None:
        self.model_version.clear()
        self.model_version.labels(name, backend).set(version)


Routes = Callable[[BaseHTTPRequestHandler, str], bool]


class MetricsServer:
    """``/metrics`` (Prometheus text) and ``/healthz`` (200 when healthy, else 503) on one port.

    ``routes`` (the operator page, ``edge/operator/app.py``) gets every request first and returns
    False for paths that are not its own.
    """

    def __init__(
        self,
        telemetry: Telemetry,
        host: str,
        port: int,
        health: Callable[[], tuple[bool, dict]],
        routes: Routes | None = None,
    ) -> None:
        registry = telemetry.registry

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                if routes is None or not routes(self, "POST"):
                    self.send_error(404)

            def do_GET(self) -> None:
                if routes is not None and routes(self, "GET"):
                    return
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    body, status, ctype = generate_latest(registry), 200, CONTENT_TYPE_LATEST
                elif path in ("/healthz", "/health"):
                    ok, detail = health()
                    body = json.dumps({"status": "ok" if ok else "unhealthy", **detail}).encode()
                    status, ctype = (200 if ok else 503), "application/json"
                else:
                    body, status, ctype = b"not found\n", 404, "text/plain"
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("metrics endpoint up", extra={"port": self.port})

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
