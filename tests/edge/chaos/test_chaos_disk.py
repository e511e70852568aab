"""Chaos: the disk under the outbox fills up while the line runs, then space comes back.

The outbox lives on a small tmpfs that the test mounts (it needs root; skipped with the reason
otherwise) and fills with a ballast file. SQLite then fails with SQLITE_FULL. What must hold: the
line keeps scoring (inference and post-processing threads alive, every frame counted), each verdict
that cannot be stored is counted (Prometheus, metrics topic) and the retained status says the disk is
full, the log says it in a line or two, and once the ballast is gone new verdicts are stored and
delivered again without a restart.
"""

from __future__ import annotations

import contextlib
import math
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from chaoskit import SITE, line_and_edge, verdicts
from edge_testkit import wait_for


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "disk"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True, text=True
        )
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test: {exc}")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs for the full-disk test (needs root): {done.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(path: Path) -> int:
    """Write until the file system says ENOSPC; returns the bytes written."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    written = 0
    try:
        for chunk in (1 << 16, 1 << 12, 1 << 9):
            with contextlib.suppress(OSError):
                while True:
                    written += os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return written


def test_disk_full_under_the_outbox_line_keeps_scoring_and_recovers(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, small_disk: Path
) -> None:
    rec = mqtt_recorder([f"{SITE}/+/result", f"{SITE}/+/status", f"{SITE}/+/metrics"])
    line, edge = line_and_edge(  # all good: one outbox row per frame
        tmp_path, mqtt_broker.url, defect=lambda i: False, outbox={"path": str(small_disk / "outbox.sqlite")}
    )
    edge.start()
    try:
        line.produce(5)
        wait_for(lambda: len(verdicts(rec)) >= 5, 120, what="verdicts before the disk fills")
        ballast = small_disk / "ballast"
        t_full = time.monotonic()
        assert fill(ballast) > 0
        line.produce(15, every_s=0.05)
        wait_for(lambda: edge.metric("linewatch_edge_frames_total") >= 20, 120, what="every frame scored")
        wait_for(
            lambda: edge.metric("linewatch_edge_outbox_not_stored") >= 1, 60, what="unstored verdicts counted"
        )
        health = edge.health()
        assert health["status"] == "ok" and health["inference_alive"] and health["postprocess_alive"]
        assert health["outbox"]["disk_full"] and health["outbox"]["not_stored"] >= 1
        wait_for(
            lambda: rec.json("line1/status")[-1].get("outbox", {}).get("disk_full"), 60, what="the status"
        )
        full_status = rec.json("line1/status")[-1]
        wait_for(lambda: rec.json("line1/metrics")[-1]["outbox_healthy"] is False, 60, what="metrics")
        assert edge.metric("linewatch_edge_outbox_healthy") == 0

        ballast.unlink()  # space is back
        full_s = time.monotonic() - t_full
        line.produce(5)
        wait_for(lambda: edge.metric("linewatch_edge_frames_total") >= 25, 120, what="frames after recovery")
        wait_for(
            lambda: edge.metric("linewatch_edge_outbox_healthy") == 1, 60, what="the outbox writable again"
        )
        not_stored = int(edge.metric("linewatch_edge_outbox_not_stored"))
        wait_for(lambda: len(verdicts(rec)) >= line.n - not_stored, 120, what="the stored verdicts")
        wait_for(
            lambda: rec.json("line1/status")[-1].get("outbox", {}).get("disk_full") is False,
            60,
            what="status",
        )
        status = rec.json("line1/status")[-1]
    finally:
        assert edge.stop() == 0, edge.tail()

    files = [d["source"]["file"] for d in verdicts(rec)]
    assert files == sorted(set(files))  # in order, each once
    lost = sorted(set(line.names()) - set(files))
    assert len(lost) == not_stored >= 1  # every verdict is delivered or counted as not stored
    assert set(lost) <= set(line.names()[5:20])  # only while the disk was full
    assert set(line.names()[20:]) <= set(files)  # recovered without a restart
    assert full_status["state"] == "online" and "full" in full_status["outbox"]["error"]
    assert status["outbox"] == {"dropped": 0, "not_stored": not_stored, "disk_full": False}
    failed = [r for r in edge.log() if r["msg"].startswith("outbox write failed")]
    repeat_s = edge.config["logging"]["repeat_every_s"]
    assert 1 <= len(failed) <= 2 + math.ceil(full_s / repeat_s), [
        r["msg"] for r in failed
    ]  # first, summaries, flush
    print(
        f"\nchaos disk full: {line.n} frames scored, {not_stored} verdicts not stored (counted), "
        f"{len(files)} delivered; disk full for {full_s:.1f} s, {len(failed)} log line(s) about it: "
        f"{failed[0]['msg']!r}"
    )
