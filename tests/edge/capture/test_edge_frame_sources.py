"""Sources: every URI form parses; bad frames are counted and skipped; failures reopen with backoff."""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from edge_testkit import render, wait_for, write_video

from linewatch.edge.capture.frame_sources import (
    CameraSource,
    Frame,
    ReadStatus,
    SourceSpec,
    check_frame,
    parse_source,
)
from linewatch.edge.config import CameraConfig


@pytest.mark.parametrize(
    ("uri", "kind", "target"),
    [
        ("0", "index", "0"),
        ("12", "index", "12"),
        ("/data/line.mp4", "file", "/data/line.mp4"),
        ("file:///data/line.avi", "file", "/data/line.avi"),
        ("rtsp://cam.local:554/stream1", "stream", "rtsp://cam.local:554/stream1"),
        ("http://cam.local/mjpg", "stream", "http://cam.local/mjpg"),
        ("gst:nvarguscamerasrc ! appsink", "gst", "nvarguscamerasrc ! appsink"),
        ("dir:/var/spool/linescan", "dir", "/var/spool/linescan"),
    ],
)
def test_parse_every_uri_form(uri: str, kind: str, target: str) -> None:
    spec = parse_source(uri)
    assert (spec.kind, spec.target) == (kind, target)
    assert spec.offline == (kind in ("file", "dir"))


@pytest.mark.parametrize("uri", ["", "  ", "gst:", "dir:"])
def test_parse_rejects_empty(uri: str) -> None:
    with pytest.raises(ValueError):
        parse_source(uri)


def test_check_frame() -> None:
    assert check_frame(None) == "empty"
    assert check_frame(np.zeros((0, 0, 3), np.uint8)) == "empty"
    assert check_frame(np.zeros((20, 20), np.uint8)) == "shape"
    assert check_frame(np.zeros((20, 20, 4), np.uint8)) == "shape"
    assert check_frame(np.zeros((20, 20, 3), np.float32)) == "dtype"
    assert check_frame(np.zeros((4, 20, 3), np.uint8)) == "shape"
    assert check_frame(np.zeros((20, 20, 3), np.uint8)) is None


class Collector:
    def __init__(self) -> None:
        self.frames: list[Frame] = []
        self.lock = threading.Lock()

    def __call__(self, frame: Frame) -> None:
        with self.lock:
            self.frames.append(frame)


FAST = CameraConfig(reopen_min_s=0.01, reopen_max_s=0.05, dir_poll_s=0.02)


class ScriptedReader:
    """Plays a script of reads; raises OSError on open when told to fail."""

    def __init__(self, script: list[str]) -> None:
        self.script = list(script)
        self.fps = 0.0

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        if not self.script:
            return ReadStatus.END, None, None
        what = self.script.pop(0)
        if what == "ok":
            return ReadStatus.FRAME, np.zeros((16, 16, 3), np.uint8), None
        if what == "fail":
            return ReadStatus.FAIL, None, None
        return ReadStatus.BAD, None, what

    def close(self) -> None:
        pass


def test_bad_frames_counted_failures_reopened_with_backoff() -> None:
    opens: list[float] = []
    scripts = [["ok", "empty", "ok", "fail"], ["shape", "ok"]]

    def factory(spec: SourceSpec, cfg: CameraConfig) -> ScriptedReader:
        opens.append(time.monotonic())
        if len(opens) in (2, 3):  # two failed opens between the scripts
            raise OSError("camera unplugged")
        return ScriptedReader(scripts.pop(0) if scripts else [])

    sink = Collector()
    cfg = CameraConfig(reopen_min_s=0.01, reopen_max_s=0.05, at_end="stop")
    src = CameraSource("c", "/fake.avi", cfg, sink, reader_factory=factory)
    src.start()
    assert src.finished.wait(30)
    assert len(sink.frames) == 3
    assert [f.source_pos for f in sink.frames] == [0, 1, 0]
    assert src.stats.bad_frames == {"empty": 1, "shape": 1}
    assert src.stats.open_failures == 2 and src.stats.reopens == 1
    gaps = np.diff(opens)
    assert gaps[2] >= gaps[1] * 0.9  # exponential: each wait at least as long as the previous


def test_dir_source_arrival_order_once_and_corrupt_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    now = time.time()
    names = ["b.png", "a.png", "c.png"]
    for i, name in enumerate(names):  # mtime order b, a, c despite the names
        cv2.imwrite(str(folder / name), render(i, i == 1))
        os.utime(folder / name, (now - 100 + i, now - 100 + i))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    os.utime(folder / "broken.png", (now - 50, now - 50))
    (folder / ".hidden.png").write_bytes(b"ignored")
    (folder / "notes.txt").write_text("ignored")
    sink = Collector()
    src = CameraSource("line", f"dir:{folder}", FAST, sink)
    src.start()
    wait_for(lambda: len(sink.frames) == 3 and src.stats.bad_frames.get("undecodable") == 1, 30)
    assert [f.source_name for f in sink.frames] == names
    cv2.imwrite(str(folder / "d.png"), render(9, False))
    wait_for(lambda: len(sink.frames) == 4, 30)
    time.sleep(0.2)  # a few more scans: nothing is read twice
    src.stop()
    src.join(10)
    assert [f.source_name for f in sink.frames] == [*names, "d.png"]
    assert src.stats.bad_frames == {"undecodable": 1}


def test_dir_source_missing_folder_retried(tmp_path: Path) -> None:
    folder = tmp_path / "later"
    sink = Collector()
    src = CameraSource("line", f"dir:{folder}", FAST, sink)
    src.start()
    wait_for(lambda: src.stats.open_failures >= 2, 30)
    folder.mkdir()
    cv2.imwrite(str(folder / "x.png"), render(0, False))
    wait_for(lambda: len(sink.frames) == 1, 30)
    src.stop()
    src.join(10)


def test_video_vanishes_and_reappears(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    write_video(video, 10)
    sink = Collector()
    src = CameraSource(
        "c", str(video), CameraConfig(reopen_min_s=0.05, reopen_max_s=0.2, at_end="wait"), sink
    )
    src.start()
    wait_for(lambda: len(sink.frames) >= 10, 60, what="first video")
    video.unlink()
    wait_for(lambda: src.stats.open_failures >= 1, 60, what="a failed reopen while the file is gone")
    write_video(video, 15)
    wait_for(lambda: len(sink.frames) >= 25, 60, what="the reappeared video")
    src.stop()
    src.join(10)
    assert src.stats.reopens >= 1
    assert [f.source_pos for f in sink.frames[10:25]] == list(range(15))


def test_video_loop_and_stop(tmp_path: Path) -> None:
    video = tmp_path / "line.avi"
    write_video(video, 5)
    sink = Collector()
    src = CameraSource("c", str(video), CameraConfig(at_end="loop"), sink)
    src.start()
    wait_for(lambda: len(sink.frames) >= 12, 60)
    src.stop()
    src.join(10)
    assert [f.source_pos for f in sink.frames[:10]] == [0, 1, 2, 3, 4] * 2
    sink2 = Collector()
    once = CameraSource("c", str(video), CameraConfig(at_end="stop"), sink2)
    once.start()
    assert once.finished.wait(60)
    assert len(sink2.frames) == 5 and sink2.frames[0].image.shape == (120, 160, 3)


class HangingReader:
    """``frames`` good frames, then a read that blocks until ``release`` is set (a driver that hangs)."""

    def __init__(self, frames: int, release: threading.Event) -> None:
        self.frames, self.release, self.fps, self.closed = frames, release, 0.0, False

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        if self.frames:
            self.frames -= 1
            return ReadStatus.FRAME, np.zeros((16, 16, 3), np.uint8), None
        self.release.wait()
        return ReadStatus.FAIL, None, None

    def close(self) -> None:
        self.closed = True


def test_watchdog_reopens_a_source_whose_read_hangs() -> None:
    release = threading.Event()
    readers: list[HangingReader] = []

    def factory(spec: SourceSpec, cfg: CameraConfig) -> HangingReader:
        readers.append(HangingReader(3 if not readers else 5, release))
        return readers[-1]

    sink = Collector()
    cfg = CameraConfig(reopen_min_s=0.01, reopen_max_s=0.05, stall_timeout_s=0.3)
    src = CameraSource("cam", "rtsp://cam.local/stream", cfg, sink, reader_factory=factory)
    t0 = time.monotonic()
    src.start()
    try:
        wait_for(lambda: len(sink.frames) >= 8, 60, what="frames from the reopened source")
        assert time.monotonic() - t0 >= src.stall_limit_s  # not before the stall limit
        assert src.stats.stalls >= 1 and src.stats.reopens >= 1
        assert src.alive and not src.finished.is_set()
        assert not readers[0].closed  # still blocked in its read, left to its thread
    finally:
        release.set()
        src.stop()
        src.join(10)
    wait_for(lambda: readers[0].closed, 30, what="the abandoned thread to close its reader")
    assert [f.source_pos for f in sink.frames[:8]] == [0, 1, 2, 0, 1, 2, 3, 4]


def test_backend_read_timeout_counts_as_a_stall(caplog: pytest.LogCaptureFixture) -> None:
    class TimesOut(ScriptedReader):
        def read(self) -> tuple[str, np.ndarray | None, str | None]:
            if self.script and self.script[0] == "timeout":
                self.script.pop(0)
                time.sleep(0.3)  # what FFmpeg's read timeout (camera.stall_timeout_s) looks like
                return ReadStatus.FAIL, None, None
            return super().read()

    scripts = [["ok", "timeout"], ["ok", "ok"]]
    sink = Collector()
    cfg = CameraConfig(reopen_min_s=0.01, reopen_max_s=0.05, stall_timeout_s=0.3, at_end="stop")
    factory = lambda spec, c: TimesOut(scripts.pop(0))  # noqa: E731
    # a camera name of its own: the limiter's runs are per camera and per process
    src = CameraSource("cam-timeout", "/fake.avi", cfg, sink, reader_factory=factory)
    caplog.set_level(logging.INFO, "linewatch.edge.capture.frame_sources")
    src.start()
    assert src.finished.wait(30)
    assert len(sink.frames) == 3 and src.stats.stalls == 1 and src.stats.reopens == 1
    stalled = [r for r in caplog.records if r.getMessage() == "source stalled; reopening"]
    assert len(stalled) == 1 and stalled[0].by == "read timeout"


def test_dir_source_resumes_after_its_mark(tmp_path: Path) -> None:
    folder = tmp_path / "spool"
    folder.mkdir()
    now = time.time_ns()
    marks = []
    for i in range(5):
        path = folder / f"{i:03d}.png"
        cv2.imwrite(str(path), render(i, False))
        os.utime(path, ns=(now - (100 - i) * 10**9, now - (100 - i) * 10**9))
        marks.append((path.stat().st_mtime_ns, path.name))
    sink = Collector()
    src = CameraSource("line", f"dir:{folder}", FAST, sink, resume_after=marks[2])
    src.start()
    wait_for(lambda: len(sink.frames) == 2, 30)
    assert [f.source_name for f in sink.frames] == ["003.png", "004.png"]
    assert [f.mark for f in sink.frames] == marks[3:]
    old = folder / "000b.png"  # arrives now, while running: read although its name sorts early
    cv2.imwrite(str(old), render(9, False))
    wait_for(lambda: len(sink.frames) == 3, 30)
    src.stop()
    src.join(10)
    assert sink.frames[-1].source_name == "000b.png"
