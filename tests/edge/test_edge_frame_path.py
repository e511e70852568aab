"""Pipeline stages without MQTT: micro-batching across cameras, one reused buffer, counted drops."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from edge_testkit import edge_config, make_bundle, render, wait_for

from linewatch.edge.capture.camera import Camera
from linewatch.edge.capture.frame_sources import Frame
from linewatch.edge.capture.queues import BoundedQueue, Closed
from linewatch.edge.frame_path import InferenceWorker, PostprocessWorker, Scored
from linewatch.edge.model.manager import ModelManager
from linewatch.edge.observability.telemetry import Telemetry
from linewatch.edge.publish.outbox import Outbox


def frame(camera: str, i: int, defective: bool = False) -> Frame:
    return Frame(camera, render(i, defective), time.time(), time.perf_counter(), 0.1, i)


def setup(tmp_path: Path, batch: int = 4, **queues: Any) -> tuple[list[Camera], ModelManager, Outbox, Any]:
    cfg = edge_config(tmp_path, "mqtt://127.0.0.1:1", batch={"size": batch, "max_wait_ms": 50}, queues=queues)
    box = Outbox(tmp_path / "o.sqlite")
    mm = ModelManager(make_bundle(tmp_path / "toy-v1", max_batch=4), cfg)
    mm.load_initial()
    cams = [Camera(n, f"x/{n}", "0", cfg, box, None) for n in ("a", "b")]
    return cams, mm, box, cfg


def drain(q: BoundedQueue[Scored], n: int) -> list[Scored]:
    out: list[Scored] = []
    deadline = time.monotonic() + 60
    while len(out) < n and time.monotonic() < deadline:
        try:
            item = q.get(timeout=0.5)
        except Closed:
            break
        if item is not None:
            out.append(item)
    return out


def test_micro_batches_across_cameras_with_one_buffer(tmp_path: Path) -> None:
    cams, mm, _box, cfg = setup(tmp_path)
    sizes: list[int] = []
    backend = mm.current().backend
    real = backend.infer
    backend.infer = lambda frames: (sizes.append(len(frames)), real(frames))[1]  # type: ignore[method-assign]
    results: BoundedQueue[Scored] = BoundedQueue(100, "block")
    worker = InferenceWorker(cams, mm, results, cfg, Telemetry())
    for i in range(2):
        cams[0]._accept(frame("a", i, i == 1))
        cams[1]._accept(frame("b", i))
    worker.start()
    got = drain(results, 4)
    buffer = worker._buffer
    for i in range(2, 6):
        cams[0]._accept(frame("a", i))
    got += drain(results, 4)
    assert worker._buffer is buffer  # preallocated once, reused
    for cam in cams:
        cam.queue.close()
    worker.join(30)
    assert sizes[0] == 4 and sum(sizes) == 8
    assert {s.frame.camera for s in got[:4]} == {"a", "b"}
    a_ids = [s.frame.frame_id for s in got if s.frame.camera == "a"]
    assert a_ids == sorted(a_ids) == list(range(6))
    flags = {(s.frame.camera, s.frame.frame_id): s.score >= 0.5 for s in got}
    assert flags[("a", 1)] and not flags[("a", 0)] and not flags[("b", 1)]
    mm.stop()


def test_live_queue_drops_oldest_and_counts(tmp_path: Path) -> None:
    cams, mm, _box, _cfg = setup(tmp_path, batch=1, frames=2, policy="drop_oldest")
    cam = cams[0]
    for i in range(5):
        cam._accept(frame("a", i))
    assert cam.queue.dropped == 3 and [cam.queue.get_nowait().frame_id for _ in range(2)] == [3, 4]
    mm.stop()


def test_postprocess_writes_result_then_heatmap(tmp_path: Path) -> None:
    cams, mm, box, cfg = setup(tmp_path, batch=1)
    results: BoundedQueue[Scored] = BoundedQueue(10, "block")
    post = PostprocessWorker({c.name: c for c in cams}, results, box, cfg, Telemetry(), mm)
    model = mm.current()
    f = frame("a", 3, True)
    f.frame_id = 7
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 10:20] = 0.9
    post.handle(Scored(f, amap, 0.9, 0, model, 0.1, 0.2, 0.3))
    f2 = frame("a", 4)
    f2.frame_id = 8
    post.handle(Scored(f2, np.zeros((64, 64), np.float32), float("nan"), 0, model, 0.1, 0.2, 0.3))
    rows = box.peek("a")
    assert [r.topic for r in rows] == ["x/a/result", "x/a/heatmap", "x/a/result", "x/a/heatmap"]
    import json

    from linewatch.edge.publish import payloads

    doc = json.loads(rows[0].payload)
    payloads.validate("result", doc)
    assert doc["frame_id"] == 7 and doc["regions"][0]["bbox"] == [25, 18, 25, 20]
    nan_doc = json.loads(rows[2].payload)
    assert nan_doc["anomalous"] and "error" in nan_doc  # fail-safe: a NaN score rejects the part
    wait_for(lambda: cams[0].results == 2, 5)
    mm.stop()
