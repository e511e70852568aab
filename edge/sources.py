"""Frame sources: every URI form of DESIGN.md read through OpenCV, one capture thread per camera.

A line must never stop because of a camera: a source that fails to open, fails to read or stalls is
reopened with capped exponential backoff; an empty, wrong-shape or undecodable frame is counted and
skipped. Each event is logged and counted (``SourceStats``) so that it shows on the metrics topic.

URI forms: ``0`` (camera index), a video file path, ``rtsp://``/``http(s)://`` streams,
``gst:PIPELINE`` (GStreamer, e.g. Jetson CSI cameras) and ``dir:PATH`` (a folder a line-scan camera
writes images into, processed in arrival order: mtime, then name; each file once).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from contract.frames import decode_file
from edge.config import CameraConfig

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
MIN_SIDE = 8


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source URI. ``kind`` is index, file, stream, gst or dir."""

    uri: str
    kind: str
    target: str

    @property
    def offline(self) -> bool:
        """Files and folders are not live: waiting on a slow consumer loses nothing."""
        return self.kind in ("file", "dir")


def parse_source(uri: str) -> SourceSpec:
    """Classify a source URI; raises ValueError for an empty or malformed one."""
    text = uri.strip()
    if not text:
        raise ValueError("empty source URI")
    if text.isdigit():
        return SourceSpec(uri, "index", text)
    lower = text.lower()
    if lower.startswith("gst:"):
        if not text[4:].strip():
            raise ValueError(f"{uri!r}: gst: needs a pipeline")
        return SourceSpec(uri, "gst", text[4:].strip())
    if lower.startswith("dir:"):
        if not text[4:].strip():
            raise ValueError(f"{uri!r}: dir: needs a folder")
        return SourceSpec(uri, "dir", text[4:].strip())
    if lower.startswith(("rtsp://", "rtsps://", "http://", "https://", "rtmp://", "udp://", "tcp://")):
        return SourceSpec(uri, "stream", text)
    if lower.startswith("file://"):
        text = text[7:]
    return SourceSpec(uri, "file", text)


@dataclass
class Frame:
    """One captured frame: the original BGR image plus where and when it came from."""

    camera: str
    image: np.ndarray  # uint8 (h, w, 3) BGR, as OpenCV decodes it
    captured_at: float  # wall clock (time.time()) for the payload's ts
    t_captured: float  # time.perf_counter() when the read returned, for latencies
    capture_ms: float
    source_pos: int  # index since the source was (re)opened
    source_name: str | None = None  # file name for dir: sources
    frame_id: int = -1  # assigned by the pipeline


@dataclass
class SourceStats:
    """Counters of one camera's source; read by the metrics collector."""

    frames: int = 0
    reopens: int = 0
    open_failures: int = 0
    bad_frames: dict[str, int] = field(default_factory=dict)

    def bad(self, reason: str) -> None:
        self.bad_frames[reason] = self.bad_frames.get(reason, 0) + 1


class ReadStatus:
    FRAME = "frame"
    END = "end"  # a video file ended
    IDLE = "idle"  # a folder has nothing new yet
    FAIL = "fail"  # the device/stream failed: reopen
    BAD = "bad"  # this frame is unusable: skip and count


def check_frame(image: np.ndarray | None) -> str | None:
    """Why a decoded frame is unusable (empty, shape, dtype), or None when it is fine."""
    if image is None or image.size == 0:
        return "empty"
    if image.ndim != 3 or image.shape[2] != 3:
        return "shape"
    if image.dtype != np.uint8:
        return "dtype"
    if min(image.shape[:2]) < MIN_SIDE:
        return "shape"
    return None


class CaptureReader:
    """cv2.VideoCapture over a camera index, a file, a stream or a GStreamer pipeline."""

    def __init__(self, spec: SourceSpec, stall_timeout_s: float) -> None:
        self.spec = spec
        self.fps = 0.0
        timeout_ms = int(stall_timeout_s * 1000)
        if spec.kind == "index":
            cap = cv2.VideoCapture(int(spec.target))
        elif spec.kind == "gst":
            cap = cv2.VideoCapture(spec.target, cv2.CAP_GSTREAMER)
        elif spec.kind == "stream":
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
            cap = cv2.VideoCapture(spec.target, cv2.CAP_FFMPEG, params)
        else:
            if not os.path.isfile(spec.target):
                raise OSError(f"video file {spec.target} does not exist")
            cap = cv2.VideoCapture(spec.target)
        if not cap.isOpened():
            cap.release()
            raise OSError(f"OpenCV could not open {spec.uri}")
        self.fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
        self._cap = cap

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        try:
            ok, image = self._cap.read()
        except cv2.error as exc:
            log.warning("read failed", extra={"source": self.spec.uri, "error": str(exc)})
            return ReadStatus.FAIL, None, None
        if not ok:
            return (ReadStatus.END if self.spec.kind == "file" else ReadStatus.FAIL), None, None
        reason = check_frame(image)
        if reason is not None:
            return ReadStatus.BAD, None, reason
        return ReadStatus.FRAME, image, None

    def close(self) -> None:
        self._cap.release()


class DirReader:
    """A watched folder: new image files in (mtime, name) order, each decoded once.

    Seen names are remembered only while the file is still in the folder, so memory stays bounded by
    the folder's size; a file removed and written again under the same name is a new image.
    """

    def __init__(self, spec: SourceSpec, settle_s: float = 0.0) -> None:
        self.spec = spec
        self.fps = 0.0
        self.folder = Path(spec.target)
        if not self.folder.is_dir():
            raise OSError(f"folder {self.folder} does not exist")
        self.settle_s = settle_s
        self._seen: set[str] = set()
        self._pending: list[tuple[int, str]] = []
        self.current_name: str | None = None

    def _scan(self) -> None:
        now_ns = time.time_ns()
        present: set[str] = set()
        fresh: list[tuple[int, str]] = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                    continue
                try:
                    if not entry.is_file():
                        continue
                    mtime = entry.stat().st_mtime_ns
                except OSError:
                    continue
                present.add(name)
                if name in self._seen:
                    continue
                if self.settle_s and now_ns - mtime < self.settle_s * 1e9:
                    continue  # still being written; take it on a later scan
                fresh.append((mtime, name))
        self._seen &= present
        fresh.sort()
        self._pending = fresh

    def read(self) -> tuple[str, np.ndarray | None, str | None]:
        if not self.folder.is_dir():
            return ReadStatus.FAIL, None, None
        if not self._pending:
            self._scan()
            if not self._pending:
                return ReadStatus.IDLE, None, None
        _, name = self._pending.pop(0)
        self._seen.add(name)
        self.current_name = name
        image = decode_file(self.folder / name)  # the trainer's decode rule (contract/frames.py)
        if image is None:
            log.warning("undecodable image skipped", extra={"source": self.spec.uri, "file": name})
            return ReadStatus.BAD, None, "undecodable"
        reason = check_frame(image)
        if reason is not None:
            return ReadStatus.BAD, None, reason
        return ReadStatus.FRAME, image, None

    def close(self) -> None:
        self._pending = []


def open_reader(spec: SourceSpec, cfg: CameraConfig) -> CaptureReader | DirReader:
    if spec.kind == "dir":
        return DirReader(spec, cfg.dir_settle_s)
    return CaptureReader(spec, cfg.stall_timeout_s)


class CameraSource:
    """One capture thread: open, read, validate, hand frames to ``sink``; reopen on failure.

    ``sink`` is called from the capture thread; it applies the queue policy (drop or block).
    ``finished`` is set when the source ends for good (file end with ``at_end='stop'``, or stop()).
    """

    def __init__(
        self,
        camera: str,
        uri: str,
        cfg: CameraConfig,
        sink: Callable[[Frame], object],
        reader_factory: Callable[[SourceSpec, CameraConfig], CaptureReader | DirReader] = open_reader,
    ) -> None:
        self.camera = camera
        self.spec = parse_source(uri)
        self.cfg = cfg
        self.sink = sink
        self.stats = SourceStats()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._reader_factory = reader_factory
        self._thread = threading.Thread(target=self._run, name=f"capture-{camera}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _open(self, backoff: float) -> tuple[CaptureReader | DirReader | None, float]:
        try:
            reader = self._reader_factory(self.spec, self.cfg)
        except (OSError, cv2.error) as exc:
            self.stats.open_failures += 1
            log.warning(
                "source open failed; retrying",
                extra={"camera": self.camera, "source": self.spec.uri, "error": str(exc), "retry_s": backoff},
            )
            self._stop.wait(backoff)
            return None, min(backoff * 2, self.cfg.reopen_max_s)
        log.info("source opened", extra={"camera": self.camera, "source": self.spec.uri})
        return reader, backoff

    def _run(self) -> None:
        backoff = self.cfg.reopen_min_s
        first = True
        try:
            while not self._stop.is_set():
                reader, backoff = self._open(backoff)
                if reader is None:
                    continue
                if not first:
                    self.stats.reopens += 1
                first = False
                try:
                    outcome = self._pump(reader)
                finally:
                    reader.close()
                if outcome == "stop":
                    return
                if outcome == "loop":
                    backoff = self.cfg.reopen_min_s
                    continue
                # failure or "wait at end": back off, then reopen
                self._stop.wait(backoff)
                backoff = min(backoff * 2, self.cfg.reopen_max_s)
        except Exception:  # the line goes on: log it; the pipeline sees `finished`
            log.exception("capture thread crashed", extra={"camera": self.camera})
        finally:
            self.finished.set()

    def _pump(self, reader: CaptureReader | DirReader) -> str:
        """Read until the reader fails or ends; returns stop, loop or reopen."""
        pos = 0
        pace = 1.0 / reader.fps if self.cfg.realtime and reader.fps > 0 else 0.0
        next_due = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status, image, why = reader.read()
            t1 = time.perf_counter()
            if status == ReadStatus.FRAME:
                assert image is not None
                self.stats.frames += 1
                name = reader.current_name if isinstance(reader, DirReader) else None
                self.sink(Frame(self.camera, image, time.time(), t1, (t1 - t0) * 1000.0, pos, name))
                pos += 1
                if pace:
                    next_due += pace
                    delay = next_due - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                continue
            if status == ReadStatus.BAD:
                self.stats.bad(why or "bad")
                log.warning("bad frame skipped", extra={"camera": self.camera, "reason": why})
                continue
            if status == ReadStatus.IDLE:
                if self.cfg.at_end == "stop":
                    return "stop"
                self._stop.wait(self.cfg.dir_poll_s)
                continue
            if status == ReadStatus.END:
                log.info("video ended", extra={"camera": self.camera, "at_end": self.cfg.at_end})
                return {"stop": "stop", "loop": "loop"}.get(self.cfg.at_end, "reopen")
            log.warning("source failed; reopening", extra={"camera": self.camera, "source": self.spec.uri})
            return "reopen"
        return "stop"
