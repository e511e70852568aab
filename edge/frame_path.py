"""The frame path: capture threads -> frame queues -> inference thread -> result queue -> postprocess.

Stages run concurrently and hand over through bounded queues with an explicit full policy, so a slow
stage never stalls the camera (live sources drop the oldest frame, counted) and memory stays flat.
The inference thread micro-batches across cameras and hands each batch to ``edge/inference/frame_scorer.py``, which
cuts every frame into its model inputs (one tile for ``resize``; the same ``contract.geometry`` code
the trainer evaluated with) straight into a reused buffer, runs them, and stitches each frame's map.
The postprocess thread turns maps into
regions and payloads and writes them to the outbox, from which each camera's MQTT link delivers them
in order.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from linewatch.edge.capture.camera import Camera, Summary
from linewatch.edge.capture.frame_sources import Frame
from linewatch.edge.capture.queues import BoundedQueue, Closed
from linewatch.edge.config import EdgeConfig
from linewatch.edge.inference.frame_scorer import FrameScorer
from linewatch.edge.inference.postprocess import find_regions, overlay_jpeg
from linewatch.edge.model.manager import LoadedModel, ModelManager
from linewatch.edge.observability.logs import RepeatLimiter
from linewatch.edge.observability.telemetry import Telemetry
from linewatch.edge.operator.live import LiveView, Shown
from linewatch.edge.publish import payloads
from linewatch.edge.publish.outbox import Outbox

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)  # per-frame failures: the first, then one summary per period

MARKS_LIMIT = 20_000


class _Stage:
    """One daemon thread running the stage's ``_run`` loop; the runtime starts, joins and watches it."""

    def __init__(self, name: str) -> None:
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def _run(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()


@dataclass
class Scored:
    """A frame with its model outputs, on its way to post-processing."""

    frame: Frame
    anomaly_map: np.ndarray
    score: float
    task: int
    model: LoadedModel
    queue_ms: float
    preprocess_ms: float
    infer_ms: float


class InferenceWorker(_Stage):
    """Gathers frames across cameras into micro-batches, preprocesses into a reused buffer, infers."""

    def __init__(
        self,
        cameras: list[Camera],
        models: ModelManager,
        results: BoundedQueue[Scored],
        cfg: EdgeConfig,
        telemetry: Telemetry,
    ) -> None:
        self.cameras, self.models, self.results, self.cfg, self.telemetry = (
            cameras,
            models,
            results,
            cfg,
            telemetry,
        )
        self.signal = threading.Event()
        for cam in cameras:
            cam.attach_signal(self.signal)
        self._scorer: tuple[LoadedModel, FrameScorer] | None = None
        self._rr = 0
        self.batches = 0
        self.errors = 0
        self.last_progress = time.monotonic()
        super().__init__("inference")

    def _take(self, limit: int) -> list[Frame]:
        """Round-robin over the cameras' queues so that one busy camera cannot starve the others."""
        taken: list[Frame] = []
        n = len(self.cameras)
        idle_rounds = 0
        while len(taken) < limit and idle_rounds < 1:
            got = False
            for k in range(n):
                cam = self.cameras[(self._rr + k) % n]
                frame = cam.queue.get_nowait()
                if frame is not None:
                    taken.append(frame)
                    got = True
                    if len(taken) >= limit:
                        break
            self._rr = (self._rr + 1) % n
            idle_rounds = 0 if got else idle_rounds + 1
        return taken

    def _gather(self, limit: int) -> list[Frame] | None:
        """Up to ``limit`` frames; None once every camera queue is closed and empty."""
        while True:
            batch = self._take(limit)
            if batch:
                if len(batch) < limit and self.cfg.batch.max_wait_ms > 0 and limit > 1:
                    deadline = time.perf_counter() + self.cfg.batch.max_wait_ms / 1000.0
                    while len(batch) < limit and time.perf_counter() < deadline:
                        self.signal.wait(max(deadline - time.perf_counter(), 0))
                        self.signal.clear()
                        batch += self._take(limit - len(batch))
                return batch
            if all(cam.queue.closed and len(cam.queue) == 0 for cam in self.cameras):
                return None
            self.signal.wait(0.5)
            self.signal.clear()

    def _run(self) -> None:
        try:
            while True:
                size = max(1, min(self.cfg.batch.size, self.models.current().bundle.max_batch))
                batch = self._gather(size)
                if batch is None:
                    return
                # Read the model after the (possibly long, idle) wait: a model swapped in while the
                # line was idle must score the very next frame. Swaps still land between batches.
                model = self.models.current()
                step = max(1, min(size, model.bundle.max_batch))
                for start in range(0, len(batch), step):
                    self._infer(model, batch[start : start + step], step)
        except Exception:
            log.exception("inference thread crashed")
        finally:
            self.results.close()

    def _scorer_for(self, model: LoadedModel) -> FrameScorer:
        """The model's scorer (geometry plans, tile buffer), made once per model."""
        if self._scorer is None or self._scorer[0] is not model:
            self._scorer = (model, FrameScorer(model.bundle, model.backend))
        return self._scorer[1]

    @property
    def _buffer(self) -> np.ndarray | None:
        """The reused batch buffer of model inputs (for tests and metrics)."""
        return None if self._scorer is None else self._scorer[1]._buffer

    def _infer(self, model: LoadedModel, batch: list[Frame], size: int) -> None:
        """One micro-batch: cut every frame into the reused buffer, infer, stitch, hand on."""
        t_start = time.perf_counter()
        try:
            outs = self._scorer_for(model).score_many([f.image for f in batch])
        except Exception as exc:
            self.errors += 1
            limited.error("inference failed; batch skipped", None, error=str(exc), frames=len(batch))
            time.sleep(0.05)
            return
        for frame, out in zip(batch, outs, strict=True):
            scored = Scored(
                frame, out.anomaly_map, out.score, out.task, model,
                queue_ms=max(0.0, (t_start - frame.t_captured) * 1000.0),
                preprocess_ms=out.cut_ms + out.stitch_ms, infer_ms=out.infer_ms,
            )  # fmt: skip
            if not self.results.put(scored):
                limited.warning("result dropped: result queue full", frame.camera, camera=frame.camera)
        self.batches += 1
        self.last_progress = time.monotonic()


class PostprocessWorker(_Stage):
    """Regions, overlay, payload; writes each verdict to the outbox and wakes the camera's link."""

    def __init__(
        self,
        cameras: dict[str, Camera],
        results: BoundedQueue[Scored],
        outbox: Outbox,
        cfg: EdgeConfig,
        telemetry: Telemetry,
        models: ModelManager,
    ) -> None:
        self.cameras, self.results, self.outbox, self.cfg, self.telemetry = (
            cameras,
            results,
            outbox,
            cfg,
            telemetry,
        )
        self.models = models
        # Payload mode: JSON by default; Sparkplug mode sets its own (edge/publish/sparkplug/wiring.py).
        self.encode: Callable[[Camera, Frame, dict[str, Any], bytes | None], list[tuple[str, bytes, int]]]
        self.encode = self.json_rows
        self.on_verdict: Callable[[Camera, dict[str, Any]], None] | None = None  # OPC UA, before MQTT
        self.live: LiveView | None = None  # the operator page's view, when it is served
        self.processed = 0
        self.errors = 0
        super().__init__("postprocess")

    def _run(self) -> None:
        while True:
            try:
                item = self.results.get(timeout=0.5)
            except Closed:
                break
            try:
                if item is not None:
                    self.handle(item)
                self._summaries()
            except Exception:
                self.errors += 1
                limited.log(logging.ERROR, "postprocess failed", None, exc_info=True)
        self._summaries(force=True)

    def handle(self, item: Scored) -> None:
        cfg = self.cfg.publish
        frame, cam = item.frame, self.cameras[item.frame.camera]
        t0 = time.perf_counter()
        threshold = cam.threshold
        score, error = item.score, None
        if not math.isfinite(score):
            score, error = 1.0, "model returned a non-finite score; flagged anomalous"
        anomalous = score >= threshold
        fh, fw = frame.image.shape[:2]
        regions = []
        heatmap: bytes | None = None
        amap = item.anomaly_map
        if anomalous:
            amap = np.nan_to_num(amap, nan=1.0, posinf=1.0, neginf=0.0)
            regions = [r.as_dict() for r in find_regions(amap, (fh, fw), threshold, cfg.min_region_area)]
            if cfg.heatmap:
                heatmap = overlay_jpeg(frame.image, amap, cfg.heatmap_alpha, cfg.heatmap_quality)
        t1 = time.perf_counter()
        post_ms = (t1 - t0) * 1000.0
        latency = {
            "capture": frame.capture_ms, "queue": item.queue_ms, "preprocess": item.preprocess_ms,
            "infer": item.infer_ms, "postprocess": post_ms, "pipeline": (t1 - frame.t_captured) * 1000.0,
        }  # fmt: skip
        body = payloads.result_payload(
            frame, cam.name, item.model, score=score, threshold=threshold, anomalous=anomalous,
            task=item.task, regions=regions, latency_ms=latency, heatmap=heatmap is not None, error=error,
        )  # fmt: skip
        messages = self.encode(cam, frame, body, heatmap) if cfg.mode == "every_frame" or anomalous else []
        if cam.gate is not None:
            cam.gate.complete(frame, anomalous, len(regions), score)
        if self.on_verdict is not None:
            try:
                self.on_verdict(cam, body)
            except Exception as exc:  # an OPC UA fault must never cost the MQTT verdict
                limited.error("verdict listener failed", cam.name, camera=cam.name, error=str(exc))
        cam.latest = (frame, amap, frame.frame_id)
        if self.live is not None:
            tasks = item.model.bundle.tasks
            self.live.record(Shown(
                cam.name, frame.frame_id, frame.image, amap, score, threshold, anomalous, regions,
                item.model.ref(), tasks[item.task] if 0 <= item.task < len(tasks) else None,
            ))  # fmt: skip
        cam.summary.add(frame.frame_id, score, anomalous)
        image_mark = (cam.uri, *frame.mark) if frame.mark is not None else None
        ids = self.outbox.add_many(cam.name, messages, image_mark) if messages else []
        if not messages and image_mark is not None:
            self.outbox.mark(cam.name, image_mark)
        if ids:  # [] when the outbox could not store them (disk full): counted there, the line goes on
            t_written = time.perf_counter()
            if len(cam.marks) > MARKS_LIMIT:
                cam.marks.pop(next(iter(cam.marks)), None)
            cam.marks[ids[0]] = (frame.t_captured, t_written)
            if cam.link is not None:
                cam.link.wake()
        self._account(cam, item, frame, post_ms, anomalous)

    @staticmethod
    def json_rows(
        cam: Camera, frame: Frame, body: dict[str, Any], heatmap: bytes | None
    ) -> list[tuple[str, bytes, int]]:
        """JSON mode: ``<root>/result`` and, for an anomaly, ``<root>/heatmap`` (DESIGN.md)."""
        messages = [(cam.topic("result"), payloads.dumps(body), 1)]
        if heatmap is not None:
            messages.append((cam.topic("heatmap"), heatmap, 1))
        return messages

    def _account(self, cam: Camera, item: Scored, frame: Frame, post_ms: float, anomalous: bool) -> None:
        t = self.telemetry
        t.observe(cam.name, "capture", frame.capture_ms)
        t.observe(cam.name, "queue", item.queue_ms)
        t.observe(cam.name, "preprocess", item.preprocess_ms)
        t.observe(cam.name, "infer", item.infer_ms)
        t.observe(cam.name, "postprocess", post_ms)
        t.frames.labels(cam.name).inc()
        windows = t.camera(cam.name)
        windows.fps.tick()
        if anomalous:
            t.anomalies.labels(cam.name).inc()
            windows.anomalies.tick()
            cam.anomalies += 1
        cam.results += 1
        self.processed += 1
        if cam.max_frames is not None and cam.results >= cam.max_frames and not cam.done.is_set():
            cam.done.set()
            cam.source.stop()

    def _summaries(self, force: bool = False) -> None:
        if self.cfg.publish.mode != "anomalies" or self.cfg.mqtt.payload != "json":
            return  # Sparkplug mode: the counters are device metrics, sent by exception
        now = time.monotonic()
        for cam in self.cameras.values():
            s = cam.summary
            if not force and now - s.since < self.cfg.publish.summary_period_s:
                continue
            if force and s.frames == 0:
                continue
            body = payloads.summary_payload(cam.name, self.models.loaded, s, now - s.since, cam.threshold)
            cam.summary = Summary()
            self.outbox.add(cam.name, cam.topic("result"), payloads.dumps(body), 1)
            if cam.link is not None:
                cam.link.wake()
