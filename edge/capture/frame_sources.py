"""Frame sources: every URI form of DESIGN.md read through OpenCV, one capture thread per camera.

A line must never stop because of a camera: a source that fails to open, fails to read or stalls is
reopened with capped exponential backoff; an empty, wrong-shape or undecodable frame is counted and
skipped. Each event is logged and counted (``SourceStats``) so that it shows on the metrics topic.

URI forms: ``0`` (camera index), a video file path, ``rtsp://``/``http(s)://`` streams,
``gst:PIPELINE`` (GStreamer, e.g. Jetson CSI cameras) and ``dir:PATH`` (a folder a line-scan camera
writes images into, processed in arrival order: mtime, then name; each file once).

Why a stall watchdog beside the backends' own timeouts: FFmpeg streams honour
``camera.stall_timeout_s`` as a read timeout, but a V4L2 device or a GStreamer pipeline can block in
``read()`` forever, and a blocked read cannot be interrupted from another thread. The watchdog
notices a reader call (open or read) that has been running longer than the stall timeout plus a
grace (so a backend's own timeout, which releases the reader cleanly, fires first), leaves that thread
to finish or hang on its own, and starts a fresh capture thread that reopens the source. At most
``MAX_STUCK`` threads are left behind; beyond that the watchdog only reports.

Why ``dir:`` sources resume after a mark: a restarted edge would otherwise score the whole folder
again under new frame ids, which subscribers cannot deduplicate. The pipeline stores the (mtime, name)
of the last image whose verdict reached the outbox, in the same transaction; a reader opened with that
mark skips the images at or before it that are already in the folder. An image copied in with an
older mtime while the edge was down is skipped too: the ordering is by mtime.

Repeated events (open failures, bad frames, stalls) are logged through ``RepeatLimiter``: the first,
then one summary per ``[logging] repeat_every_s``; ``SourceStats`` counts every one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from linewatch.contract.frames import decode_file
from linewatch.edge.config import CameraConfig
from linewatch.edge.observability.logs import RepeatLimiter

log = logging.getLogger(__name__)
limited = RepeatLimiter(log)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm"})
MIN_SIDE = 8
MAX_STUCK = 4  # capture threads left blocked in a driver before the watchdog stops abandoning more


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
    mark: tuple[int, str] | None = None  # dir: sources: (mtime_ns, name), stored with the verdict


@dataclass
class SourceStats:
    """Counters of one camera's source; read by the metrics collector."""

    frames: int = 0
    reopens: int = 0
    open_failures: int = 0
    stalls: int = 0  # reads or opens that hung past camera.stall_timeout_s (backend timeout or watchdog)
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
            limited.warning("read failed", self.spec.uri, source=self.spec.uri, error=str(exc))
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

    def __init__(self, spec: SourceSpec, settle_s: float = 0.0, after: tuple[int, str] | None = None) -> None:
        self.spec = spec
        self.fps = 0.0
        self.folder = Path(spec.target)
        if not self.folder.is_dir():
            raise OSError(f"folder {self.folder} does not exist")
        self.settle_s = settle_s
        self._seen: set[str] = set()
        self._pending: list[tuple[int, str]] = []
        self._after = after
        self.current_name: str | None = None
        self.current_mark: tuple[int, str] | None = None

    def skip_through(self, mark: tuple[int, str] | None) -> None:
        """Before the first read: images already in the folder at or before ``mark`` are done."""
        if mark is not None and (self._after is None or mark > self._after):
            self._after = mark

    def _scan(self) -> None:
        now_ns = time.time_ns()
        after, self._after = self._after, None  # only the images there at the first scan
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
                if after is not None and (mtime, name) <= after:
                    self._seen.add(name)
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
        mtime, name = self._pending.pop(0)
        self._seen.add(name)
        self.current_name, self.current_mark = name, (mtime, name)
        image = decode_file(self.folder / name)  # the trainer's decode rule (contract/frames.py)
        if image is None:
            return ReadStatus.BAD, None, "undecodable"  # counted and logged (rate-limited) by the caller
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
    """One capture thread: open, read, validate, hand frames to ``sink``; reopen on failure or stall.

    ``sink`` is called from the capture thread; it applies the queue policy (drop or block).
    ``finished`` is set when the source ends for good (file end with ``at_end='stop'``, or stop()).
    ``resume_after`` (dir: sources): the mark of the last image whose verdict is already stored.
    """

    def __init__(
        self,
        camera: str,
        uri: str,
        cfg: CameraConfig,
        sink: Callable[[Frame], object],
        reader_factory: Callable[[SourceSpec, CameraConfig], CaptureReader | DirReader] = open_reader,
        resume_after: tuple[int, str] | None = None,
    ) -> None:
        self.camera = camera
        self.spec = parse_source(uri)
        self.cfg = cfg
        self.sink = sink
        self.stats = SourceStats()
        self.finished = threading.Event()
        self._stop = threading.Event()
        self._reader_factory = reader_factory
        self._mark = resume_after
        self._gen = 0  # the capture thread generation; the watchdog starts a new one on a stall
        self._busy: tuple[int, float] | None = None  # (generation, since) of the reader call in progress
        self._stuck: list[threading.Thread] = []
        self._thread = self._capture_thread(0)
        self._watchdog = threading.Thread(target=self._watch, name=f"watchdog-{camera}", daemon=True)

    def _capture_thread(self, gen: int) -> threading.Thread:
        return threading.Thread(target=self._run, args=(gen,), name=f"capture-{self.camera}", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._watchdog.start()

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    @property
    def stall_limit_s(self) -> float:
        """How long one reader call may run before the watchdog replaces the capture thread."""
        return self.cfg.stall_timeout_s + max(1.0, self.cfg.stall_timeout_s / 2)

    def _warn(self, message: str, **fields: Any) -> None:
        """A rate-limited warning about this camera's source (one limiter key per camera)."""
        limited.warning(message, self.camera, camera=self.camera, source=self.spec.uri, **fields)

    def _stalled(self, seconds: float, by: str) -> None:
        """Count and log a stall; the caller reopens the source."""
        self.stats.stalls += 1
        self._warn("source stalled; reopening", stalled_s=round(seconds, 1), by=by)

    # ----- the watchdog --------------------------------------------------------------------------
    def _call(self, gen: int, fn: Callable[[], Any]) -> Any:
        """Run one reader call (open/read) under the watchdog's eye."""
        self._busy = (gen, time.monotonic())
        try:
            return fn()
        finally:
            if self._busy is not None and self._busy[0] == gen:
                self._busy = None

    def _watch(self) -> None:
        limit = self.stall_limit_s
        while not self._stop.wait(min(1.0, limit / 4)):
            busy = self._busy
            if busy is None or busy[0] != self._gen or time.monotonic() - busy[1] < limit:
                continue
            self._stuck = [t for t in self._stuck if t.is_alive()]
            if len(self._stuck) >= MAX_STUCK:
                limited.error(
                    "camera stuck: capture threads blocked in the driver; not starting more",
                    self.camera,
                    camera=self.camera,
                    stuck_threads=len(self._stuck),
                )
                continue
            self._stalled(time.monotonic() - busy[1], by="watchdog")
            self._stuck.append(self._thread)
            self._gen += 1
            self._busy = None
            self._thread = self._capture_thread(self._gen)
            self._thread.start()

    # ----- the capture thread --------------------------------------------------------------------
    def _open(self, gen: int, backoff: float) -> tuple[CaptureReader | DirReader | None, float]:
        try:
            reader = self._call(gen, lambda: self._reader_factory(self.spec, self.cfg))
        except (OSError, cv2.error) as exc:
            self.stats.open_failures += 1
            self._warn("source open failed; retrying", error=str(exc), retry_s=backoff)
            self._stop.wait(backoff)
            return None, min(backoff * 2, self.cfg.reopen_max_s)
        if isinstance(reader, DirReader):
            reader.skip_through(self._mark)
        limited.flush(self.camera, camera=self.camera)
        limited.info("source opened", self.camera, camera=self.camera, source=self.spec.uri)
        return reader, backoff

    def _run(self, gen: int) -> None:
        backoff = self.cfg.reopen_min_s
        first = gen == 0
        try:
            while not self._stop.is_set() and gen == self._gen:
                reader, backoff = self._open(gen, backoff)
                if reader is None:
                    continue
                if gen != self._gen:  # the watchdog gave up on this thread while it was opening
                    reader.close()
                    return
                if not first:
                    self.stats.reopens += 1
                first = False
                try:
                    outcome = self._pump(gen, reader)
                finally:
                    reader.close()
                if outcome in ("stop", "abandoned"):
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
            if gen == self._gen:
                self.finished.set()

    def _pump(self, gen: int, reader: CaptureReader | DirReader) -> str:
        """Read until the reader fails or ends; returns stop, loop, reopen or abandoned."""
        pos = 0
        pace = 1.0 / reader.fps if self.cfg.realtime and reader.fps > 0 else 0.0
        next_due = time.perf_counter()
        while not self._stop.is_set():
            t0 = time.perf_counter()
            status, image, why = self._call(gen, reader.read)
            t1 = time.perf_counter()
            if gen != self._gen:
                return "abandoned"  # the watchdog already reopened the source in a new thread
            mark = reader.current_mark if isinstance(reader, DirReader) else None
            if mark is not None and (self._mark is None or mark > self._mark):
                self._mark = mark
            if status == ReadStatus.FRAME:
                assert image is not None
                self.stats.frames += 1
                name = reader.current_name if isinstance(reader, DirReader) else None
                self.sink(
                    Frame(self.camera, image, time.time(), t1, (t1 - t0) * 1000.0, pos, name, mark=mark)
                )
                pos += 1
                if pace:
                    next_due += pace
                    delay = next_due - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                continue
            if status == ReadStatus.BAD:
                self.stats.bad(why or "bad")
                file = reader.current_name if isinstance(reader, DirReader) else None
                limited.warning("bad frame skipped", self.camera, camera=self.camera, reason=why, file=file)
                continue
            if status == ReadStatus.IDLE:
                if self.cfg.at_end == "stop":
                    return "stop"
                self._stop.wait(self.cfg.dir_poll_s)
                continue
            if status == ReadStatus.END:
                limited.info("video ended", self.camera, camera=self.camera, at_end=self.cfg.at_end)
                return {"stop": "stop", "loop": "loop"}.get(self.cfg.at_end, "reopen")
            if t1 - t0 >= 0.9 * self.cfg.stall_timeout_s:  # the backend's own read timeout fired
                self._stalled(t1 - t0, by="read timeout")
            else:
                self._warn("source failed; reopening")
            return "reopen"
        return "stop"
