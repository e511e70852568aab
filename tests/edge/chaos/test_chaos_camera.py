"""Chaos: an IP camera (MJPEG over HTTP) that stops sending without closing the connection.

OpenCV's FFmpeg backend reads the stream; ``camera.stall_timeout_s`` is its read timeout, and the
source's watchdog is the backstop for backends without one (V4L2, GStreamer; unit-tested with a
reader that blocks forever). What must hold: the stall is noticed within the stall limit, counted,
the camera reopened with backoff, and frames of the new connection scored, with nothing else to do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaoskit import SITE, MjpegCamera, parse_ts, toy_edge, verdicts
from edge_testkit import wait_for

STALL_S = 2.0
PER_CONNECTION = 15


def test_hanging_http_camera_is_noticed_and_reopened(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{SITE}/+/result"])
    cam = MjpegCamera(per_connection=PER_CONNECTION)
    edge = toy_edge(
        tmp_path,
        cam.url,
        mqtt_broker.url,
        camera={"stall_timeout_s": STALL_S},
        queues={"policy": "block"},  # count verdicts exactly: a slow CI box must not drop live frames
    )
    edge.start()
    try:
        wait_for(lambda: len(cam.hung_at) >= 2, 120, what="a second connection, after the first stalled")
        wait_for(
            lambda: len(verdicts(rec)) >= 2 * PER_CONNECTION - 2, 120, what="verdicts from both connections"
        )
        stalls = edge.metric("linewatch_edge_source_stalls")
        reopens = edge.metric("linewatch_edge_source_reopens")
    finally:
        assert edge.stop() == 0, edge.tail()
        cam.close()

    noticed = [r for r in edge.log() if r["msg"].startswith("source stalled")]
    assert noticed, edge.tail()
    after_s = parse_ts(noticed[0]["ts"]) - cam.hung_at[0]
    limit_s = STALL_S + max(1.0, STALL_S / 2)  # CameraSource.stall_limit_s: the watchdog's bound
    docs = verdicts(rec)
    positions = [d["source"]["pos"] for d in docs]
    print(
        f"\nchaos camera: stall noticed {after_s:.1f} s after the camera went silent (by {noticed[0]['by']}, "
        f"limit {limit_s} s); stalls {stalls:.0f}, reopens {reopens:.0f}, HTTP requests {cam.requests}, "
        f"{len(docs)} verdicts"
    )
    assert stalls >= 1 and reopens >= 1 and cam.requests >= 2
    assert after_s <= limit_s + 2.0  # + scheduling slack on a loaded machine
    assert all(d["anomalous"] == (d["source"]["pos"] % 5 == 4) for d in docs)  # decoded right
    assert positions.count(0) >= 2  # frames of the reopened connection were scored
    assert len(noticed) <= 2 * len(cam.hung_at)  # one line per stall at most
