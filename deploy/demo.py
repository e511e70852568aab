"""`make demo`: the whole line on one machine, without a GPU, in a few minutes.

    python -m deploy.demo --out demo-out [--fast]

What it does, printing every step:

 1. generates two products of real-texture parts (brick, moon) with the one generator
    (`trainer.data.generate`), plus a third (camera) kept aside for the refresh;
 2. trains PatchCore with continual learning on the two (`linewatch-train fit`);
 3. makes a signing key, exports a signed bundle and publishes it into a bundle store
    (`<store>/<name>-v000001/` + `current`), the layout the edge and the refresh share;
 4. starts mosquitto on a free loopback port and the edge (`linewatch-edge run`) on a
    `dir:` camera (a line-scan camera's folder) that the demo feeds with the frames of
    generated line videos, with known defect frames;
 5. subscribes to the results like SCADA and prints a live table of verdicts;
 6. shows the third product to the running model (which has never seen it);
 7. drops the third product into the refresh drop directory and runs one refresh
    (`linewatch-refresh run`): update, gate, export, verify, publish, confirm, while the
    line keeps running;
 8. shows the version switch (`linewatch-refresh status --live`) and the third product's
    defects caught by the new model;
 9. a throughput burst, then the summary: frames, anomalies, fps, latency p99, and results
    lost (frames written into the camera folder minus distinct results received: must be 0).

Everything stays under --out (data, run, keys, store, logs, videos, summary.json); the
broker and the edge are stopped on exit, error or Ctrl-C included. Exit status 0 when
every check passed, 1 when one failed, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import queue
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

__all__ = ["FAST", "FULL", "Plan", "main"]

MARKER = ".linewatch-demo"  # a folder with this file was made by the demo and may be wiped by it
CAMERA = "cam0"
TOPIC_ROOT = f"linewatch/demo/line1/station1/{CAMERA}"


@dataclass(frozen=True)
class Plan:
    """How big the demo is. FULL is `make demo`; FAST is the CI-sized variant (`--fast`).

    The products are generator sources on which PatchCore separates the generated defects
    well at 256 px (brick: image AUROC 1.00, cell 0.99, camera 1.00 with 30 training
    images); smaller images lose the finer defects, so FAST keeps the size and cuts counts.
    """

    name: str
    size: int  # generated image / model resolution (square)
    n_train: int  # good images per product in train/good (val_fraction of them calibrate)
    n_test: int  # good and defective test images per product (each)
    budget: int  # PatchCore memory-bank patches over all products
    products: tuple[str, ...] = ("brick", "cell")
    new_product: str = "camera"
    val_fraction: float = 0.4  # held-out good images that set the 0.5 threshold
    video_frames: int = 40  # frames of each known product's line video
    defect_every: int = 4  # every 4th video frame has a defect
    new_frames: int = 12  # frames of the new product shown before and after the refresh
    feed_fps: float = 4.0  # pace of the camera during the live phases
    background_fps: float = 1.0  # pace while the refresh trains (2 shared cores)
    burst: int = 48  # frames written at once to measure throughput
    report: bool = True  # trainer report.html
    max_drop: float = 0.05  # gate: 10+10 test images per product, one swapped pair is 0.01
    new_task_floor: float = 0.90
    confirm_timeout_s: float = 180.0


FULL = Plan("full", size=256, n_train=50, n_test=10, budget=3000)
FAST = Plan(
    "fast",
    size=256,
    n_train=24,  # fewer leave the scene-like camera product uncovered (its defects then pass)
    n_test=8,
    budget=1200,
    video_frames=16,
    new_frames=8,
    feed_fps=6.0,
    burst=16,
    report=False,
    new_task_floor=0.80,  # 8+8 test images and 14 training images: AUROC is coarse here
)


# ----------------------------------------------------------------------------- printing
_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


class Steps:
    """Numbered step headers with their durations."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def __call__(self, name: str, text: str) -> None:
        self.end()
        self.n += 1
        self._name, self._t0 = name, time.monotonic()
        say()
        say(f"[{self.n}/{self.total}] {text}")

    def end(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.monotonic() - self._t0, 1)
            say(f"      ({self._name}: {self.times[self._name]:.1f}s)")
            self._name = None


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


class UsageError(DemoError):
    """Bad usage (exit status 2)."""


# ----------------------------------------------------------------------------- processes
class Children:
    """Every long-lived child (broker, edge) in its own process group, stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        fh = open(log, "ab")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own group: stopping it stops its threads' children too
            )
        finally:
            fh.close()
        self.procs.append((name, proc))
        return proc

    @staticmethod
    def stop(name: str, proc: subprocess.Popen, grace_s: float) -> int | None:
        """SIGTERM to the group (a graceful drain), SIGKILL after `grace_s`."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                say(f"      {name} did not stop within {grace_s:g}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return proc.returncode

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):  # edge before broker: it publishes offline, drains
            self.stop(name, proc, 40.0 if name == "edge" else 10.0)
        self.procs.clear()


def run_tool(
    label: str,
    argv: Sequence[str],
    log: Path,
    *,
    echo: Callable[[str], bool] | None = None,
    timeout_s: float = 1800.0,
) -> int:
    """Run a CLI to completion, echoing its output indented (all of it goes to `log`)."""
    say(f"      $ {shlex.join(_short(argv))}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: queue.Queue[str | None] = queue.Queue()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise DemoError(f"{label} took longer than {timeout_s:g}s (log: {log})") from None
                    continue
                if line is None:
                    break
                fh.write(line + "\n")
                if echo is None or echo(line):
                    say(f"      {label} | {line}")
            return proc.wait()
        finally:
            if proc.poll() is None:  # interrupted or timed out: stop it and its workers
                Children.stop(label, proc, 30.0)
                with contextlib.suppress(queue.Empty):  # what it said while cleaning up
                    while (line := lines.get(timeout=1.0)) is not None:
                        fh.write(line + "\n")
                        say(f"      {label} | {line}")


def _short(argv: Sequence[str]) -> list[str]:
    """The command as a person would type it (`python -m x`, paths relative to the cwd)."""
    out = []
    for i, arg in enumerate(argv):
        if i == 0 and arg == sys.executable:
            out.append("python")
            continue
        with contextlib.suppress(ValueError):
            if os.path.isabs(arg):
                rel = os.path.relpath(arg)
                arg = rel if not rel.startswith("../..") else arg
        out.append(arg)
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def mosquitto_binary() -> str | None:
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


def start_broker(children: Children, workdir: Path, logs: Path) -> int:
    """mosquitto on a free loopback port, anonymous, no persistence; returns the port."""
    binary = mosquitto_binary()
    if binary is None:
        raise DemoError("mosquitto is not installed (`make mosquitto` installs it)")
    for _attempt in range(5):
        port = free_port()
        conf = workdir / "mosquitto.conf"
        lines = [f"listener {port} 127.0.0.1", "allow_anonymous true", "persistence false", "log_dest stderr"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # as root it would drop to a `mosquitto` user that may not exist
        conf.write_text("\n".join(lines) + "\n")
        proc = children.start("mosquitto", [binary, "-c", str(conf)], logs / "mosquitto.log")
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.3):
                return port
            time.sleep(0.05)
        children.stop("mosquitto", proc, 5)
        children.procs = [(n, p) for n, p in children.procs if p is not proc]
    raise DemoError(f"mosquitto did not start (log: {logs / 'mosquitto.log'})")


# ----------------------------------------------------------------------------- the line
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

    def __init__(self, port: int) -> None:
        import paho.mqtt.client as mqtt

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
        client.subscribe([(f"{TOPIC_ROOT}/result", 1), (f"{TOPIC_ROOT}/status", 1)])
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
    """Keeps the line running (known products, in a loop) while the refresh trains and swaps."""

    def __init__(self, camera: Camera, items: Sequence[tuple[Any, str, int, Any]], fps: float) -> None:
        self.camera, self.items, self.fps = camera, list(items), fps
        self.stop = threading.Event()
        self.names: list[str] = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="demo-line", daemon=True)

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                self.names += self.camera.feed(self.items, "during refresh", self.fps, self.stop)
        except BaseException as exc:  # reported by the main thread
            self.error = exc

    def __enter__(self) -> Background:
        self.thread.start()
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


# ----------------------------------------------------------------------------- the demo
class Demo:
    def __init__(self, out: Path, plan: Plan) -> None:
        self.out, self.plan = out, plan
        self.py = sys.executable
        self.d = {
            name: out / name
            for name in (
                "dataset",
                "incoming",
                "drop",
                "run",
                "keys",
                "store",
                "frames",
                "videos",
                "logs",
                "work",
            )
        }
        self.children = Children()
        self.board: Board | None = None
        self.summary: dict[str, Any] = {"plan": asdict(plan), "checks": {}}
        self.steps = Steps(9)

    # -- helpers
    def tool(
        self, label: str, argv: Sequence[str], log_name: str, echo: Callable[[str], bool] | None = None
    ) -> None:
        log = self.d["logs"] / log_name
        code = run_tool(label, argv, log, echo=echo)
        if code != 0:
            raise DemoError(f"{label} failed with exit code {code} (full output: {log})")

    def check(self, name: str, ok: bool, detail: str) -> bool:
        self.summary["checks"][name] = {"ok": bool(ok), "detail": detail}
        say(f"      check {'PASS' if ok else 'FAIL'}: {name}: {detail}")
        return ok

    # -- steps
    def generate(self) -> None:
        from trainer.data.generate import generate_dataset, generate_video, read_video

        p = self.plan
        self.steps(
            "generate",
            f"Generating {', '.join(p.products)} ({p.n_train} good training images each, {p.size}x{p.size}) "
            f"and line videos with known defects (trainer.data.generate)",
        )
        common = {"n_train": p.n_train, "n_test_good": p.n_test, "n_test_defect": p.n_test, "size": p.size}
        generate_dataset(self.d["dataset"], list(p.products), seed=0, **common)
        generate_dataset(self.d["incoming"], [p.new_product], seed=0, **common)
        say(f"      dataset {self.d['dataset']} (MVTec layout: train/good, test/<defect>, ground_truth)")
        say(f"      kept aside for the refresh: {self.d['incoming'] / p.new_product}")
        self.videos: dict[str, list[tuple[Any, str, int, Any]]] = {}
        for product, n, every in [
            *((prod, p.video_frames, p.defect_every) for prod in p.products),
            (p.new_product, p.new_frames, 2),
        ]:
            path = self.d["videos"] / f"{product}.avi"
            truths = generate_video(
                path, product, n_frames=n, defect_every=every, size=p.size, fps=10, seed=1, codec="FFV1"
            )  # lossless, so the frames are the parts exactly as rendered
            frames = read_video(path)
            self.videos[product] = [(frames[t.index], product, t.index, t) for t in truths]
            n_def = sum(t.defective for t in truths)
            say(
                f"      video {path.name}: {n} frames, {n_def} with a defect ({', '.join(sorted({t.defect_type for t in truths if t.defect_type}))})"
            )

    def train(self) -> None:
        p = self.plan
        self.steps(
            "train",
            f"Training PatchCore with continual learning on {', '.join(p.products)}, one after the other",
        )
        config = self.d["work"] / "train.toml"
        config.write_text(
            "# demo-sized PatchCore; val_fraction of the good images calibrate the 0.5 threshold\n"
            f"val_fraction = {p.val_fraction}\n[patchcore]\nbudget = {p.budget}\n"
        )
        argv = [
            self.py, "-m", "trainer", "fit",
            "--data", f"mvtec:{self.d['dataset']}", "--tasks", ",".join(p.products),
            "--method", "patchcore", "--strategy", "cl", "--out", str(self.d["run"]),
            "--config", str(config), "--image-size", str(p.size), "--no-progress",
        ]  # fmt: skip
        if not p.report:
            argv.append("--no-report")
        self.tool("train", argv, "train.log")
        metrics = json.loads((self.d["run"] / "metrics.json").read_text())
        self.summary["trained"] = {
            "tasks": metrics["tasks"],
            "image_auroc": dict(zip(metrics["tasks"], metrics["matrix"]["image_auroc"][-1], strict=True)),
        }
        if (self.d["run"] / "report.html").exists():
            say(f"      report: {self.d['run'] / 'report.html'}")

    def export(self) -> None:
        from deploy.refresh.publish import LocalStore

        self.steps(
            "export", "Signing key, signed bundle (ONNX graph + memory bank + golden samples), bundle store"
        )
        self.tool("keygen", [self.py, "-m", "export", "keygen", "--out", str(self.d["keys"])], "export.log")
        first = self.d["work"] / "bundle-first"
        self.tool(
            "export",
            [
                self.py, "-m", "export", "--run", str(self.d["run"]), "--out", str(first),
                "--store", str(self.d["store"]), "--sign-key", str(self.d["keys"] / "linewatch.key"),
            ],
            "export.log",
        )  # fmt: skip
        report = QuietJson()
        self.tool(
            "verify",
            [self.py, "-m", "edge", "verify", "--bundle", str(first), "--key", str(self.d["keys"] / "linewatch.pub")],
            "export.log",
            echo=report,
        )  # fmt: skip
        say(f"      verify | {report.verdict()}")
        published = LocalStore(self.d["store"]).publish(first)
        shutil.rmtree(first)
        self.summary["versions"] = {"first": published.version}
        say(f"      published: {self.d['store'] / published.dirname}, current -> {published.dirname}")

    def start_line(self) -> None:
        self.steps("line", "Starting mosquitto and the edge on a dir: camera; subscribing like SCADA")
        self.port = start_broker(self.children, self.d["work"], self.d["logs"])
        say(f"      mosquitto listening on 127.0.0.1:{self.port}")
        self.board = Board(self.port)
        say(f"      subscribed to {TOPIC_ROOT}/result and /status")
        self.camera = Camera(self.d["frames"], self.board)
        edge_toml = self.d["work"] / "edge.toml"
        edge_toml.write_text(
            "\n".join(
                [
                    "[topic]", 'site = "demo"', 'line = "line1"', 'station = "station1"',
                    "[publish]", 'mode = "every_frame"',
                    "[outbox]", f'path = "{self.d["work"] / "outbox.sqlite"}"',
                    "[metrics]", "port = 0", 'host = "127.0.0.1"', "period_s = 5",
                    "[reload]", "watch_interval_s = 0.5", f'key = "{self.d["keys"] / "linewatch.pub"}"',
                    "require_signature = true",
                    "[camera]", "dir_poll_s = 0.05", "dir_settle_s = 0",
                    "[watchdog]", "enabled = false",
                ]
            )
            + "\n"
        )  # fmt: skip
        argv = [
            self.py, "-m", "edge", "run", "--bundle", str(self.d["store"]),
            "--source", f"dir:{self.d['frames']}", "--camera", CAMERA,
            "--mqtt", f"mqtt://127.0.0.1:{self.port}", "--config", str(edge_toml),
        ]  # fmt: skip
        say(f"      $ {shlex.join(_short(argv))}")
        self.edge = self.children.start("edge", argv, self.d["logs"] / "edge.log")
        first = self.summary["versions"]["first"]
        deadline = time.monotonic() + 120
        while not self.board.wait_status(first, 1.0):
            if self.edge.poll() is not None:
                raise DemoError(
                    f"the edge exited with {self.edge.returncode} (log: {self.d['logs'] / 'edge.log'})"
                )
            if time.monotonic() > deadline:
                raise DemoError(
                    f"the edge did not report v{first} online in 120s (log: {self.d['logs'] / 'edge.log'})"
                )
        say(f"      edge pid {self.edge.pid} serving v{first}; log {self.d['logs'] / 'edge.log'}")

    def production(self) -> list[tuple[Any, str, int, Any]]:
        """Known products interleaved, as they come down the line."""
        p = self.plan
        streams = [self.videos[prod] for prod in p.products]
        return [item for group in zip(*streams, strict=True) for item in group]

    def run_line(self) -> None:
        p = self.plan
        self.steps(
            "verdicts", f"The line runs: {len(self.production())} parts at {p.feed_fps:g}/s; live verdicts"
        )
        say(HEADER)
        names = self.camera.feed(self.production(), "production", p.feed_fps)
        self.wait_results(names, "production")
        stats = PhaseStats.of(self.board.of(names))
        self.summary["production"] = asdict(stats)
        say(f"      production: {stats.line()}")

    def new_product(self, phase: str) -> PhaseStats:
        p = self.plan
        items = self.videos[p.new_product]
        say(HEADER)
        names = self.camera.feed(items, phase, p.feed_fps)
        self.wait_results(names, phase)
        stats = PhaseStats.of(self.board.of(names))
        self.summary[phase.replace(" ", "_")] = asdict(stats)
        say(f"      {p.new_product} {phase}: {stats.line()}")
        return stats

    def before(self) -> None:
        p = self.plan
        self.steps(
            "before", f"A new product, {p.new_product}, comes down the line; the live model has never seen it"
        )
        self.before_stats = self.new_product("before refresh")
        b = self.before_stats
        if b.false_alarms or b.caught < b.defects:
            say(
                f"      -> v{self.summary['versions']['first']} cannot inspect {p.new_product}: "
                f"{b.false_alarms} of {b.good} good parts rejected, {b.defects - b.caught} of {b.defects} defects "
                "missed; an operator cannot tell a defect from a good part"
            )

    def refresh(self) -> None:
        p = self.plan
        self.steps(
            "refresh",
            f"Dropping {p.new_product} into the drop directory and running one refresh while the line keeps running",
        )
        shutil.move(str(self.d["incoming"] / p.new_product), str(self.d["drop"] / p.new_product))
        config = self.write_refresh_config()
        self.refresh_config = config
        self.tool(
            "status",
            [self.py, "-m", "deploy.refresh", "status", "--live", "--config", str(config)],
            "refresh.log",
        )
        assert self.board is not None
        self.board.quiet = True
        before = len(self.board.verdicts)
        t0 = time.monotonic()
        say(f"      (verdicts keep coming at {p.background_fps:g}/s; the table pauses during the refresh)")
        with Background(self.camera, self.production(), p.background_fps) as line:
            stop_beat = threading.Event()

            def beat() -> None:
                while not stop_beat.wait(15):
                    vs = self.board.all()
                    say(
                        f"      line    | {len(vs) - before} verdicts during the refresh so far, "
                        f"latest on v{vs[-1].version if vs else '?'}, edge status v{self.board.status_version()}"
                    )

            beater = threading.Thread(target=beat, daemon=True)
            beater.start()
            try:
                code = run_tool(
                    "refresh",
                    [self.py, "-m", "deploy.refresh", "run", "--config", str(config)],
                    self.d["logs"] / "refresh.log",
                    echo=QuietJson("refresh"),
                )
            finally:
                stop_beat.set()
            # a few more frames after the switch, so the table shows both versions around it
            time.sleep(max(2.0, 3.0 / p.background_fps))
        self.board.quiet = False
        if line.error is not None:
            raise DemoError(f"the camera feeder failed: {line.error}")
        self.summary["refresh"] = {"exit_code": code, "wall_s": round(time.monotonic() - t0, 1)}
        self.during = line.names
        self.wait_results(line.names, "during refresh")
        record = _last_record(self.d["work"] / "refresh.jsonl")
        if record:
            self.summary["refresh"].update(
                outcome=record.get("outcome"),
                versions=record.get("versions"),
                gate=(record.get("gate") or {}).get("passed"),
                metrics=record.get("metrics"),
                export=(record.get("drop") or {}).get("export"),
            )
        if code != 0:
            raise DemoError(f"the refresh exited with {code} (log: {self.d['logs'] / 'refresh.log'})")

    def after(self) -> None:
        p = self.plan
        self.steps(
            "after",
            f"The switch, on the store and on the edge's status; {p.new_product} again, on the new model",
        )
        self.tool(
            "status",
            [self.py, "-m", "deploy.refresh", "status", "--live", "--config", str(self.refresh_config)],
            "refresh.log",
        )
        during = self.board.of(self.during)
        switch = next((i for i in range(1, len(during)) if during[i].version != during[i - 1].version), None)
        new_version = (self.summary.get("refresh", {}).get("versions") or {}).get("live")
        self.summary["versions"]["after"] = new_version
        self.summary["versions"]["edge_status"] = self.board.status_version()
        if switch is not None:
            a, b = during[switch - 1], during[switch]
            say(
                f"      the edge swapped models between frame {a.frame_id} (v{a.version}) and frame {b.frame_id} "
                f"(v{b.version}); {len(during)} frames during the refresh, none without a verdict"
            )
            self.summary["switch"] = {"last_old": a.frame_id, "first_new": b.frame_id}
        say(f"      verdicts during the refresh: {PhaseStats.of(during).line()}")
        self.summary["during_refresh"] = asdict(PhaseStats.of(during))
        self.after_stats = self.new_product("after refresh")

    def burst(self) -> None:
        p = self.plan
        self.steps("summary", f"Throughput burst ({p.burst} frames written at once), then the summary")
        prod = self.production()
        items = [prod[i % len(prod)] for i in range(p.burst)]
        t0 = time.time()
        names = self.camera.feed(items, "burst", 0)
        self.wait_results(names, "burst")
        vs = self.board.of(names)
        span = max(v.received for v in vs) - t0
        self.summary["burst"] = {
            "frames": len(vs),
            "seconds": round(span, 2),
            "fps": round(len(vs) / span, 1),
        }
        say(f"      {len(vs)} frames scored and delivered in {span:.1f}s: {len(vs) / span:.1f} frames/s")

    def wait_results(self, names: Sequence[str], what: str) -> None:
        assert self.board is not None
        timeout = 60.0 + 2.0 * len(names)
        deadline = time.monotonic() + timeout
        while not self.board.wait_files(names, 1.0):
            if self.edge.poll() is not None:
                raise DemoError(
                    f"the edge exited with {self.edge.returncode} (log: {self.d['logs'] / 'edge.log'})"
                )
            if time.monotonic() > deadline:
                got = {v.file for v in self.board.of(names)}
                missing = len(set(names) - got)
                say(f"      {missing} of the {len(names)} {what} frames have no verdict after {timeout:g}s")
                return

    def finish(self, wall_s: float) -> int:
        assert self.board is not None
        vs = self.board.all()
        sent = list(self.camera.written)
        got = {v.file for v in vs}
        lost = sorted(set(sent) - got)
        ids = sorted(v.frame_id for v in vs)
        gaps = (ids[-1] - ids[0] + 1 - len(ids)) if ids else 0
        paced = [v for v in vs if v.sent is not None and v.sent.phase != "burst"]
        anomalies = sum(v.anomalous for v in vs)
        first_v = self.summary["versions"]["first"]
        new_v = self.summary["versions"].get("after")
        after = getattr(self, "after_stats", None)
        production = self.summary.get("production") or {}
        results = {
            "frames_sent": len(sent),
            "results_received": len(vs),
            "results_lost": len(lost),
            "lost_files": lost[:20],
            "duplicates": self.board.duplicates,
            "frame_id_first": ids[0] if ids else None,
            "frame_id_last": ids[-1] if ids else None,
            "frame_id_gaps": gaps,
            "anomalies": anomalies,
            "fps": (self.summary.get("burst") or {}).get("fps"),
            "latency_ms": {
                "pipeline_p50": percentile([v.pipeline_ms for v in paced], 50),
                "pipeline_p99": percentile([v.pipeline_ms for v in paced], 99),
                "infer_p50": percentile([v.infer_ms for v in paced], 50),
                "end_to_end_p50": percentile([v.e2e_ms for v in paced if v.e2e_ms is not None], 50),
                "end_to_end_p99": percentile([v.e2e_ms for v in paced if v.e2e_ms is not None], 99),
            },
        }
        self.summary["results"] = results
        self.check("nothing lost", not lost and gaps == 0, f"{len(sent)} frames written, {len(vs)} distinct verdicts, "
                   f"{len(lost)} lost, {gaps} frame_id gaps, {self.board.duplicates} duplicates")  # fmt: skip
        self.check(
            "version switched",
            new_v is not None and new_v > first_v and self.summary["versions"].get("edge_status") == new_v,
            f"v{first_v} -> v{new_v}, edge status reported v{self.summary['versions'].get('edge_status')}",
        )
        before = getattr(self, "before_stats", None)
        if after is not None and before is not None:
            # Before, the unknown product is all "anomalous" (good parts too): a verdict that tells
            # nothing. After, its defects must all be caught and its good parts mostly pass.
            self.check(
                f"{self.plan.new_product} inspected after the refresh",
                after.defects > 0
                and after.caught == after.defects
                and after.versions == [new_v]
                and after.false_alarms < max(1, before.false_alarms)
                and after.false_alarms <= after.good // 2,
                f"defects caught {after.caught}/{after.defects}, good parts rejected {after.false_alarms}/{after.good} "
                f"(before the refresh: caught {before.caught}/{before.defects}, rejected {before.false_alarms}/{before.good})",
            )
        if production:
            self.check(
                "known products",
                production["caught"] >= 0.75 * production["defects"] and production["false_alarms"] <= 0.25 * production["good"],
                f"defects caught {production['caught']}/{production['defects']}, false alarms "
                f"{production['false_alarms']}/{production['good']}",
            )  # fmt: skip
        self.summary["wall_s"] = round(wall_s, 1)
        self.summary["step_s"] = self.steps.times
        self.summary["ok"] = all(c["ok"] for c in self.summary["checks"].values())
        lat = results["latency_ms"]
        say()
        say("=" * 78)
        say(f"  Linewatch demo ({self.plan.name}) summary")
        say(f"  frames written into the camera folder : {len(sent)}")
        say(f"  verdicts received (distinct)           : {len(vs)}   duplicates: {self.board.duplicates}")
        say(
            f"  results lost                           : {len(lost)}   (frame_id {results['frame_id_first']}..{results['frame_id_last']}, gaps {gaps})"
        )
        say(f"  anomalies                              : {anomalies}")
        say(f"  throughput (burst)                     : {results['fps']} frames/s")
        say(
            f"  latency capture->verdict p50 / p99     : {lat['pipeline_p50']} / {lat['pipeline_p99']} ms (inference p50 {lat['infer_p50']} ms)"
        )
        say(
            f"  latency file written->SCADA p50 / p99  : {lat['end_to_end_p50']} / {lat['end_to_end_p99']} ms"
        )
        say(
            f"  model                                  : v{first_v} -> v{new_v} (refresh {self.summary.get('refresh', {}).get('wall_s')}s)"
        )
        for key in ("production", "before_refresh", "during_refresh", "after_refresh"):
            if key in self.summary:
                s = PhaseStats(**self.summary[key])
                say(f"  {key.replace('_', ' '):<39}: {s.line()}")
        say(
            f"  wall time                              : {wall_s:.0f}s   ({', '.join(f'{k} {v:.0f}s' for k, v in self.steps.times.items())})"
        )
        say(f"  all checks                             : {'PASS' if self.summary['ok'] else 'FAIL'}")
        say("=" * 78)
        return 0 if self.summary["ok"] else 1

    def write_refresh_config(self) -> Path:
        p = self.plan
        path = self.d["work"] / "refresh.toml"
        text = f"""# linewatch-refresh configuration written by the demo (see deploy/refresh/refresh.example.toml)
run_dir   = "{self.d["run"]}"
data      = "mvtec:{self.d["dataset"]}"
drop_dir  = "{self.d["drop"]}"
sign_key  = "{self.d["keys"] / "linewatch.key"}"
log_path  = "{self.d["work"] / "refresh.jsonl"}"
lock_path = "{self.d["work"] / "refresh.lock"}"
python    = "{self.py}"

[store]
dir = "{self.d["store"]}"
keep = 5

[gate]
metric = "image_auroc"
max_drop = {p.max_drop:g}
new_task_floor = {p.new_task_floor:g}
baseline = "run"  # the run's own metrics.json is fresh here: it saves one evaluation

[mqtt]
url = "mqtt://127.0.0.1:{self.port}"
topic_root = ["{TOPIC_ROOT}"]
confirm_timeout_s = {p.confirm_timeout_s:g}

[steps]
drop_settle_s = 0
"""
        path.write_text(text)
        say(f"      refresh config: {path}")
        return path

    # -- driver
    def prepare(self) -> None:
        if self.out.exists() and any(self.out.iterdir()):
            if not (self.out / MARKER).exists():
                raise UsageError(f"{self.out} exists and was not made by the demo; choose another --out")
            shutil.rmtree(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / MARKER).write_text("made by python -m deploy.demo; removed by the next demo run\n")
        for path in self.d.values():
            path.mkdir(parents=True, exist_ok=True)

    def run(self) -> int:
        t0 = time.monotonic()
        say(f"Linewatch demo ({self.plan.name}): everything goes to {self.out}")
        self.prepare()
        try:
            self.generate()
            self.train()
            self.export()
            self.start_line()
            self.run_line()
            self.before()
            self.refresh()
            self.after()
            self.burst()
            self.steps.end()
        except BaseException:
            self.steps.end()
            self.stop()
            self.summary["wall_s"] = round(time.monotonic() - t0, 1)
            self.write_summary()
            raise
        self.stop()
        code = self.finish(time.monotonic() - t0)
        self.write_summary()
        return code

    def write_summary(self) -> None:
        (self.out / "summary.json").write_text(json.dumps(self.summary, indent=1, default=str) + "\n")

    def stop(self) -> None:
        self.summary["pids"] = {name: proc.pid for name, proc in self.children.procs}
        if self.children.procs:
            say("      stopping the edge (drains its queues, publishes offline) and the broker")
        if self.board is not None:
            # The edge's last results and its offline status still arrive while it drains.
            edge = next((p for n, p in self.children.procs if n == "edge"), None)
            if edge is not None:
                Children.stop("edge", edge, 40.0)
                self.children.procs = [(n, q) for n, q in self.children.procs if q is not edge]
                self.summary["edge_exit_code"] = edge.returncode
            self.board.close()
        self.children.stop_all()


class QuietJson:
    """An echo filter: hides JSON log lines and `edge verify`'s JSON report (the log keeps them).

    Each report is parsed; with `label`, it is shown right away as one line under that label.
    """

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self.depth = 0
        self.doc: list[str] = []
        self.reports: list[dict[str, Any]] = []

    def __call__(self, line: str) -> bool:
        text = line.strip()
        if self.depth == 0 and text.startswith('{"ts"'):
            return False
        if self.depth == 0 and text != "{":
            return True
        if self.depth == 0:
            self.doc = []
        self.doc.append(text)
        self.depth += text.count("{") - text.count("}")
        if self.depth <= 0:
            self.depth = 0
            with contextlib.suppress(ValueError):
                self.reports.append(json.loads("\n".join(self.doc)))
                if self.label:
                    say(f"      {self.label} |     {self.verdict()}")
        return False

    def verdict(self) -> str:
        if not self.reports:
            return "no report"
        r = self.reports[-1]
        g = r.get("golden") or {}
        return (
            f"ok={r.get('ok')}: {r['model']['name']} v{r['model']['version']}, signature verified "
            f"{r.get('signature_verified')}, golden samples {g.get('n')} on {r.get('backend')} "
            f"(max score error {g.get('max_score_error', 0):.1e}, map {g.get('max_map_error', 0):.1e})"
        )


def _last_record(path: Path) -> dict[str, Any] | None:
    try:
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        return json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return None


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deploy.demo",
        description="The whole Linewatch line on this machine: data, training, signed bundle, broker, "
        "edge, live verdicts, one refresh with a new product, and a summary.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo-out"), help="working folder (replaced)")
    parser.add_argument(
        "--fast", action="store_true", help="CI-sized: fewer images and frames (about half the time)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    plan = FAST if args.fast else FULL
    demo = Demo(args.out.resolve(), plan)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return demo.run()
    except UsageError as exc:
        say(f"demo: {exc}")
        return 2
    except DemoError as exc:
        say(f"\ndemo FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("\ndemo interrupted; the broker and the edge were stopped")
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
