"""The demo's line: a camera writing frames into the edge's `dir:` folder, a SCADA-like subscriber
that pairs every verdict with the frame it was about, and the numbers the summary is made of.

Kept apart from `deploy/demo.py` so that file reads as the story it tells.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linewatch.deploy.demo_kit import DemoError, say


@dataclass
class Sent:
    """What the demo wrote into the camera folder: the ground truth of one frame."""

    name: str
    product: str
    index: int
    defective: bool
    defect_type: str | None
    bbox: tuple[int, int, int, int] | None  # x0, y0, x1, y1 (exclusive)
    phase: str
    written: float  # time.time() when the file appeared


@dataclass
class Verdict:
    frame_id: int
    camera: str
    version: int
    task_name: str | None
    score: float
    anomalous: bool
    regions: list[dict[str, Any]]
    pipeline_ms: float
    infer_ms: float
    received: float
    file: str | None
    e2e_ms: float | None = None
    sent: Sent | None = None

    @property
    def located(self) -> bool:
        """A region overlaps the true defect's box."""
        if self.sent is None or self.sent.bbox is None:
            return False
        x0, y0, x1, y1 = self.sent.bbox
        for region in self.regions:
            rx, ry, rw, rh = region["bbox"]
            if rx < x1 and rx + rw > x0 and ry < y1 and ry + rh > y0:
                return True
        return False


HEADER = (
    f"      {'frame':>5} {'camera':<6} {'model':<5} {'task':<7} {'score':>6} {'verdict':<7} "
    f"{'regions (n: WxH@x,y)':<22} {'lat ms':>6}  truth -> check"
)


def _row(v: Verdict) -> str:
    if v.regions:
        x, y, w, h = v.regions[0]["bbox"]
        regions = f"{len(v.regions)}: {w}x{h}@{x},{y}"
    else:
        regions = "-"
    if v.sent is None:
        truth, check = "?", ""
    else:
        truth = f"{v.sent.product} {v.sent.defect_type or 'good'}"
        if v.sent.defective:
            check = ("caught, located" if v.located else "caught") if v.anomalous else "MISSED"
        else:
            check = "FALSE ALARM" if v.anomalous else "ok"
    verdict = "ANOMALY" if v.anomalous else "good"
    return (
        f"      {v.frame_id:>5} {v.camera:<6} v{v.version:<4} {(v.task_name or '?')[:7]:<7} {v.score:>6.3f} "
        f"{verdict:<7} {regions:<22} {v.pipeline_ms:>6.1f}  {truth} -> {check}"
    )


class Board:
    """The SCADA side: subscribes to results and status, dedups on (camera, frame_id), prints rows."""

    def __init__(self, port: int, topic_root: str) -> None:
        import paho.mqtt.client as mqtt

        self.topic_root = topic_root
        self.verdicts: dict[tuple[str, int], Verdict] = {}
        self.duplicates = 0
        self.unparsed = 0
        self.statuses: list[tuple[float, dict[str, Any]]] = []
        self.sent: dict[str, Sent] = {}
        self.quiet = False
        self.lock = threading.Lock()
        self.changed = threading.Condition(self.lock)
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"linewatch-demo-scada-{secrets.token_hex(3)}",
            protocol=mqtt.MQTTv311,
            clean_session=True,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.2, 2.0)
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(15):
            raise DemoError("the demo's subscriber could not connect to the broker")

    def _on_connect(self, client: Any, _ud: Any, _flags: Any, reason: Any, _props: Any) -> None:
        if reason.is_failure:
            return
        client.subscribe([(f"{self.topic_root}/result", 1), (f"{self.topic_root}/status", 1)])
        self.connected.set()

    def _on_message(self, _client: Any, _ud: Any, msg: Any) -> None:
        now = time.time()
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            self.unparsed += 1
            return
        if msg.topic.endswith("/status"):
            self._status(now, doc)
        elif doc.get("schema") == "linewatch.edge.result/1":
            self._result(now, doc)

    def _status(self, now: float, doc: dict[str, Any]) -> None:
        with self.changed:
            last = self.statuses[-1][1] if self.statuses else None
            self.statuses.append((now, doc))
            self.changed.notify_all()
        if last is None or (last.get("state"), last.get("model")) != (doc.get("state"), doc.get("model")):
            model = doc.get("model") or {}
            extra = f"  error: {doc['error']}" if doc.get("error") else ""
            say(
                f"      >> status {doc.get('camera')}: {doc.get('state')}, model {model.get('name')} "
                f"v{model.get('version')} on {doc.get('backend')}{extra}"
            )

    def _result(self, now: float, doc: dict[str, Any]) -> None:
        key = (str(doc["camera"]), int(doc["frame_id"]))
        file = (doc.get("source") or {}).get("file")
        lat = doc.get("latency_ms") or {}
        with self.changed:
            if key in self.verdicts:
                self.duplicates += 1
                return
            sent = self.sent.get(file) if file else None
            v = Verdict(
                frame_id=key[1],
                camera=key[0],
                version=int((doc.get("model") or {}).get("version", -1)),
                task_name=doc.get("task_name"),
                score=float(doc["score"]),
                anomalous=bool(doc["anomalous"]),
                regions=list(doc.get("regions") or []),
                pipeline_ms=float(lat.get("pipeline", float("nan"))),
                infer_ms=float(lat.get("infer", float("nan"))),
                received=now,
                file=file,
                e2e_ms=(now - sent.written) * 1000.0 if sent else None,
                sent=sent,
            )
            self.verdicts[key] = v
            quiet = self.quiet
            self.changed.notify_all()
        if not quiet:
            say(_row(v))

    # -- queries
    def status_version(self) -> int | None:
        with self.lock:
            if not self.statuses:
                return None
            doc = self.statuses[-1][1]
        return (doc.get("model") or {}).get("version") if doc.get("state") == "online" else None

    def wait_status(self, version: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                if self.statuses:
                    doc = self.statuses[-1][1]
                    if doc.get("state") == "online" and (doc.get("model") or {}).get("version") == version:
                        return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.5))

    def wait_online(self, version: int, edge: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
        """Until the edge's retained status says `version` is online; DemoError when the edge dies or is late."""
        deadline = time.monotonic() + timeout
        while not self.wait_status(version, 1.0):
            if edge.poll() is not None:
                raise DemoError(f"the edge exited with {edge.returncode} (log: {log})")
            if time.monotonic() > deadline:
                raise DemoError(f"the edge did not report v{version} online in {timeout:g}s (log: {log})")

    def wait_files(self, names: Iterable[str], timeout: float) -> bool:
        wanted = set(names)
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                got = {v.file for v in self.verdicts.values()}
                if wanted <= got:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(min(left, 0.5))

    def of(self, names: Iterable[str]) -> list[Verdict]:
        wanted = set(names)
        with self.lock:
            return sorted((v for v in self.verdicts.values() if v.file in wanted), key=lambda v: v.frame_id)

    def all(self) -> list[Verdict]:
        with self.lock:
            return sorted(self.verdicts.values(), key=lambda v: v.frame_id)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.client.disconnect()
        with contextlib.suppress(Exception):
            self.client.loop_stop()


class Camera:
    """The line-scan camera: writes frames into the folder the edge watches, atomically, in order."""

    def __init__(self, folder: Path, board: Board) -> None:
        self.folder = folder
        self.board = board
        self.seq = 0
        self.lock = threading.Lock()
        self.written: list[str] = []

    def put(self, frame_rgb: Any, product: str, index: int, truth: Any, phase: str) -> str:
        import cv2

        with self.lock:
            self.seq += 1
            kind = truth.defect_type if truth.defective else "good"
            name = f"{self.seq:06d}-{product}-{index:03d}-{kind}.png"
            tmp = self.folder / f".{name}.tmp.png"  # dot-names are ignored by the edge's dir: reader
            if not cv2.imwrite(str(tmp), cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)):
                raise DemoError(f"could not write {tmp}")
            sent = Sent(
                name, product, index, bool(truth.defective), truth.defect_type,
                tuple(truth.bbox) if truth.bbox else None, phase, time.time(),
            )  # fmt: skip
            with self.board.lock:
                self.board.sent[name] = sent
            os.rename(tmp, self.folder / name)
            self.written.append(name)
            return name

    def feed(
        self,
        items: Sequence[tuple[Any, str, int, Any]],
        phase: str,
        fps: float,
        stop: threading.Event | None = None,
    ) -> list[str]:
        """Write `items` at `fps` (0: all at once); returns the file names."""
        names = []
        period = 1.0 / fps if fps > 0 else 0.0
        due = time.monotonic()
        for frame, product, index, truth in items:
            if stop is not None and stop.is_set():
                break
            names.append(self.put(frame, product, index, truth, phase))
            if period:
                due += period
                delay = due - time.monotonic()
                if delay > 0:
                    if stop is not None:
                        stop.wait(delay)
                    else:
                        time.sleep(delay)
        return names


class Background:
    """Keeps the line running (known products, in a loop) while the refresh trains and swaps.

    ``beat`` is called every ``beat_s`` meanwhile (a progress line, since the table pauses).
    """

    def __init__(
        self,
        camera: Camera,
        items: Sequence[tuple[Any, str, int, Any]],
        fps: float,
        beat: Callable[[], None] | None = None,
        beat_s: float = 15.0,
    ) -> None:
        self.camera, self.items, self.fps = camera, list(items), fps
        self.stop = threading.Event()
        self.names: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="demo-line", daemon=True)
        self.beat, self.beat_s = beat, beat_s

    def _beat(self) -> None:
        while self.beat is not None and not self.stop.wait(self.beat_s):
            self.beat()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.names += self.camera.feed(self.items, "during refresh", self.fps, self.stop)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def __enter__(self) -> Background:
        self.thread.start()
        threading.Thread(target=self._beat, name="demo-beat", daemon=True).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(10)


# ----------------------------------------------------------------------------- numbers
def percentile(values: Sequence[float], q: float) -> float | None:
    import numpy as np

    vals = [v for v in values if v == v]  # drop NaN
    return round(float(np.percentile(vals, q)), 1) if vals else None


@dataclass
class PhaseStats:
    frames: int = 0
    anomalies: int = 0
    defects: int = 0
    caught: int = 0
    located: int = 0
    good: int = 0
    false_alarms: int = 0
    versions: list[int] = field(default_factory=list)

    @classmethod
    def of(cls, verdicts: Sequence[Verdict]) -> PhaseStats:
        s = cls()
        for v in verdicts:
            s.frames += 1
            s.anomalies += v.anomalous
            if v.version not in s.versions:
                s.versions.append(v.version)
            if v.sent is None:
                continue
            if v.sent.defective:
                s.defects += 1
                s.caught += v.anomalous
                s.located += v.anomalous and v.located
            else:
                s.good += 1
                s.false_alarms += v.anomalous
        return s

    def line(self) -> str:
        return (
            f"{self.frames} frames on v{'/v'.join(map(str, self.versions)) or '-'}: defects caught {self.caught}/{self.defects} "
            f"(located {self.located}), false alarms {self.false_alarms}/{self.good}"
        )


def wait_results(
    board: Board, names: Sequence[str], what: str, edge: subprocess.Popen, edge_log: Path
) -> None:
    """Until every frame in `names` has its verdict (or a generous timeout, which the checks then show)."""
    timeout = 60.0 + 2.0 * len(names)
    deadline = time.monotonic() + timeout
    while not board.wait_files(names, 1.0):
        if edge.poll() is not None:
            raise DemoError(f"the edge exited with {edge.returncode} (log: {edge_log})")
        if time.monotonic() > deadline:
            missing = len(set(names) - {v.file for v in board.of(names)})
            say(f"      {missing} of the {len(names)} {what} frames have no verdict after {timeout:g}s")
            return


def line_results(
    verdicts: Sequence[Verdict], written: Sequence[str], duplicates: int, fps: float | None
) -> dict:
    """What the subscriber saw against what the camera wrote: losses, frame_id gaps, latencies."""
    lost = sorted(set(written) - {v.file for v in verdicts})
    ids = sorted(v.frame_id for v in verdicts)
    paced = [v for v in verdicts if v.sent is not None and v.sent.phase != "burst"]
    e2e = [v.e2e_ms for v in paced if v.e2e_ms is not None]
    return {
        "frames_sent": len(written),
        "results_received": len(verdicts),
        "results_lost": len(lost),
        "lost_files": lost[:20],
        "duplicates": duplicates,
        "frame_id_first": ids[0] if ids else None,
        "frame_id_last": ids[-1] if ids else None,
        "frame_id_gaps": (ids[-1] - ids[0] + 1 - len(ids)) if ids else 0,
        "anomalies": sum(v.anomalous for v in verdicts),
        "fps": fps,
        "latency_ms": {
            "pipeline_p50": percentile([v.pipeline_ms for v in paced], 50),
            "pipeline_p99": percentile([v.pipeline_ms for v in paced], 99),
            "infer_p50": percentile([v.infer_ms for v in paced], 50),
            "end_to_end_p50": percentile(e2e, 50),
            "end_to_end_p99": percentile(e2e, 99),
        },
    }


def judge(
    summary: dict[str, Any], new_product: str, before: PhaseStats | None, after: PhaseStats | None
) -> list:
    """The demo's checks, as (name, ok, detail): nothing lost, the switch, the new and the known products."""
    r, versions = summary["results"], summary["versions"]
    first_v, new_v = versions["first"], versions.get("after")
    checks = [
        ("nothing lost", r["results_lost"] == 0 and r["frame_id_gaps"] == 0,
         f"{r['frames_sent']} frames written, {r['results_received']} distinct verdicts, {r['results_lost']} lost, "
         f"{r['frame_id_gaps']} frame_id gaps, {r['duplicates']} duplicates"),
        ("version switched", new_v is not None and new_v > first_v and versions.get("edge_status") == new_v,
         f"v{first_v} -> v{new_v}, edge status reported v{versions.get('edge_status')}"),
    ]  # fmt: skip
    if after is not None and before is not None:
        # Before, the unknown product is all "anomalous" (good parts too): a verdict that tells
        # nothing. After, its defects must all be caught and its good parts mostly pass.
        checks.append((
            f"{new_product} inspected after the refresh",
            after.defects > 0 and after.caught == after.defects and after.versions == [new_v]
            and after.false_alarms < max(1, before.false_alarms) and after.false_alarms <= after.good // 2,
            f"defects caught {after.caught}/{after.defects}, good parts rejected {after.false_alarms}/{after.good} "
            f"(before the refresh: caught {before.caught}/{before.defects}, rejected {before.false_alarms}/{before.good})",
        ))  # fmt: skip
    prod = summary.get("production")
    if prod:
        checks.append((
            "known products",
            prod["caught"] >= 0.75 * prod["defects"] and prod["false_alarms"] <= 0.25 * prod["good"],
            f"defects caught {prod['caught']}/{prod['defects']}, false alarms {prod['false_alarms']}/{prod['good']}",
        ))  # fmt: skip
    return checks


def print_summary(name: str, summary: dict[str, Any]) -> None:
    """The closing table: frames, verdicts, losses, throughput, latency, versions, phases, checks."""
    r, lat, versions = summary["results"], summary["results"]["latency_ms"], summary["versions"]
    rows = [
        ("frames written into the camera folder", f"{r['frames_sent']}"),
        ("verdicts received (distinct)", f"{r['results_received']}   duplicates: {r['duplicates']}"),
        ("results lost", f"{r['results_lost']}   (frame_id {r['frame_id_first']}..{r['frame_id_last']}, "
         f"gaps {r['frame_id_gaps']})"),
        ("anomalies", f"{r['anomalies']}"),
        ("throughput (burst)", f"{r['fps']} frames/s"),
        ("latency capture->verdict p50 / p99", f"{lat['pipeline_p50']} / {lat['pipeline_p99']} ms "
         f"(inference p50 {lat['infer_p50']} ms)"),
        ("latency file written->SCADA p50 / p99", f"{lat['end_to_end_p50']} / {lat['end_to_end_p99']} ms"),
        ("model", f"v{versions['first']} -> v{versions.get('after')} "
         f"(refresh {summary.get('refresh', {}).get('wall_s')}s)"),
        *((key.replace("_", " "), PhaseStats(**summary[key]).line())
          for key in ("production", "before_refresh", "during_refresh", "after_refresh") if key in summary),
        ("wall time", f"{summary['wall_s']:.0f}s   ("
         + ", ".join(f"{k} {v:.0f}s" for k, v in summary["step_s"].items()) + ")"),
        ("all checks", "PASS" if summary["ok"] else "FAIL"),
    ]  # fmt: skip
    say()
    say("=" * 78)
    say(f"  Linewatch demo ({name}) summary")
    for label, value in rows:
        say(f"  {label:<39}: {value}")
    say("=" * 78)
