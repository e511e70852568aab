"""The chaos suite's real parts: the edge CLI as a subprocess, a TCP proxy that black-holes, an MJPEG
camera that hangs, and readers for what the edge says about itself (JSON log, Prometheus, CPU time).

Why subprocesses: the faults under test are process-level (SIGKILL of the edge and of the broker, a
silent socket, a full disk), and what must hold (nothing lost, no frame id reused, bounded logs and
CPU) is what a separate subscriber and the kernel's accounting see, not what the runtime reports
about itself.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import cv2
from edge_testkit import make_bundle, render, wait_for

from linewatch.deploy.localbroker import accepting

REPO = Path(__file__).resolve().parents[3]
SITE = "linewatch/site/line/station"


def toml(sections: dict[str, dict[str, Any]]) -> str:
    """A flat two-level TOML document (what the edge config needs)."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))

    out = []
    for name, keys in sections.items():
        out.append(f"[{name}]")
        out += [f"{k} = {value(v)}" for k, v in keys.items()]
    return "\n".join(out) + "\n"


def parse_ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


class EdgeProcess:
    """``python -m linewatch.edge.cli run`` with a TOML config; stderr (JSON lines) appended to one file per test."""

    def __init__(self, work: Path, bundle: Path, source: str, url: str, name: str = "line1", **config: Any):
        """``config``: TOML sections (``camera={...}``) merged over the test defaults below."""
        self.work, self.bundle, self.source, self.camera = work, bundle, source, name
        self.log_path = work / "edge.log"
        sections: dict[str, dict[str, Any]] = {
            "mqtt": {"url": url, "reconnect_min_s": 0.1, "reconnect_max_s": 1.0, "connect_timeout_s": 3},
            "metrics": {"port": 0, "host": "127.0.0.1", "period_s": 0.5},
            "outbox": {"path": str(work / "outbox.sqlite"), "drain_timeout_s": 5},
            "camera": {"reopen_min_s": 0.1, "reopen_max_s": 1.0, "dir_poll_s": 0.05},
            "backend": {"order": ["ort-cpu"], "threads": 1},
            "logging": {"repeat_every_s": 5},
        }
        for section, keys in config.items():
            sections.setdefault(section, {}).update(keys)
        self.config = sections
        self.config_path = work / "edge.toml"
        self.config_path.write_text(toml(sections))
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[int] = []  # log file offset of each start
        self.kills = 0

    def start(self, timeout: float = 120) -> None:
        self.starts.append(self.log_path.stat().st_size if self.log_path.exists() else 0)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env = {k: v for k, v in env.items() if not k.startswith("LINEWATCH_EDGE_")}
        with open(self.log_path, "ab") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "linewatch.edge.cli", "run", "--bundle", str(self.bundle), "--source", self.source,
                 "--camera", self.camera, "--config", str(self.config_path)],
                cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=err,
            )  # fmt: skip
        wait_for(
            lambda: self.proc.poll() is not None or any(r.get("msg") == "edge running" for r in self.log(-1)),
            timeout,
            what="the edge to start",
        )
        assert self.proc.poll() is None, self.tail()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def kill(self) -> None:
        """SIGKILL: no drain, no offline status, no outbox close."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.kills += 1

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def log(self, start: int | None = None) -> list[dict[str, Any]]:
        """JSON log records, of all starts or of start number ``start`` (-1: the latest)."""
        if not self.log_path.exists():
            return []
        data = self.log_path.read_bytes()
        if start is not None and self.starts:
            begin = self.starts[start]
            following = self.starts[start + 1 :] if start != -1 else []
            data = data[begin : following[0] if following else len(data)]
        out = []
        for line in data.decode(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def lines_between(self, t0: float, t1: float) -> list[dict[str, Any]]:
        return [r for r in self.log() if t0 <= parse_ts(r["ts"]) <= t1]

    def tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def cpu_s(self) -> float:
        """utime + stime of the edge process (all threads), from /proc."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def cpu_share(self, seconds: float) -> float:
        """Cores used over the next ``seconds`` of wall time."""
        c0, t0 = self.cpu_s(), time.monotonic()
        time.sleep(seconds)
        return (self.cpu_s() - c0) / (time.monotonic() - t0)

    @property
    def metrics_port(self) -> int:
        ports = [r["port"] for r in self.log(-1) if r.get("msg") == "metrics endpoint up"]
        assert ports, self.tail()
        return int(ports[-1])

    def prom(self) -> dict[str, float]:
        """The Prometheus endpoint as {'name{labels}': value}."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        text = urllib.request.urlopen(url, timeout=30).read().decode()
        out = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, val = line.rpartition(" ")
                out[key] = float(val)
        return out

    def metric(self, name: str) -> float:
        prom = self.prom()
        return prom.get(f'{name}{{camera="{self.camera}"}}', prom.get(name, 0.0))

    def health(self) -> dict[str, Any]:
        url = f"http://127.0.0.1:{self.metrics_port}/healthz"
        try:
            return json.loads(urllib.request.urlopen(url, timeout=30).read())
        except urllib.error.HTTPError as exc:  # 503 carries the same JSON
            return json.loads(exc.read())


def every_fifth(i: int) -> bool:
    return i % 5 == 4


class Producer:
    """A line camera writing frames into a dir: source; frame i is defective when ``defect(i)``."""

    def __init__(self, folder: Path, defect: Callable[[int], bool] = every_fifth) -> None:
        from edge_testkit import write_frame

        self.folder, self.defect, self.n = folder, defect, 0
        self._write = write_frame
        folder.mkdir(parents=True, exist_ok=True)

    def produce(self, count: int, every_s: float = 0.0) -> None:
        for _ in range(count):
            self._write(self.folder, self.n, self.defect(self.n))
            self.n += 1
            if every_s:
                time.sleep(every_s)

    def names(self) -> list[str]:
        return [f"{i:06d}.png" for i in range(self.n)]


def toy_edge(work: Path, source: str, url: str, **config: Any) -> EdgeProcess:
    """An edge process (not started) serving the toy bundle, written under ``work``, from ``source``."""
    return EdgeProcess(work, make_bundle(work / "toy-v1"), source, url, **config)


def line_and_edge(
    work: Path, url: str, defect: Callable[[int], bool] = every_fifth, **config: Any
) -> tuple[Producer, EdgeProcess]:
    """A line camera writing into ``work/spool`` and the toy edge (not started) reading it as ``dir:``."""
    line = Producer(work / "spool", defect=defect)
    return line, toy_edge(work, f"dir:{line.folder}", url, **config)


def unscored(line: Producer, rec: Any) -> list[str]:
    """The images the line wrote that no verdict received names yet."""
    return sorted(set(line.names()) - {d["source"]["file"] for d in verdicts(rec)})


def verdicts(rec: Any, camera: str = "line1") -> list[dict[str, Any]]:
    """Every result received, in arrival order (duplicates included)."""
    return [d for d in rec.json(f"{camera}/result") if d.get("schema") == "linewatch.edge.result/1"]


def by_id(docs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for d in docs:
        out.setdefault(d["frame_id"], d)
    return out


def broker_saved(broker: Any, rec: Any, timeout: float = 60) -> None:
    """Wait until mosquitto has saved its state with the subscriber's session in it.

    A SIGKILLed broker loses what it had not saved yet (``autosave_interval 1``): a restarted one
    without the subscriber's persistent session would accept the edge's backlog for nobody. That is
    the broker's durability window, not the edge's; the chaos tests kill only outside it.
    """
    wait_for(rec.client.is_connected, timeout, what="the subscriber on the broker")
    t0 = time.time()
    db = broker.workdir / "mosquitto.db"
    wait_for(lambda: db.exists() and db.stat().st_mtime > t0, timeout, what="mosquitto to save its state")


def kill_broker(broker: Any) -> None:
    """SIGKILL mosquitto (no persistence save at exit), then wait until its port is closed."""
    assert broker.proc is not None
    broker.proc.kill()
    broker.proc.wait(30)
    broker.proc = None
    wait_for(lambda: not accepting(broker.port, broker.host), 30, what="the killed broker's port to close")


class BlackHoleProxy:
    """127.0.0.1 TCP proxy in front of the broker that can stop forwarding without closing anything.

    While black-holed it neither reads nor accepts: bytes sit in kernel buffers and new connections
    wait in the backlog, as when a network drops packets (no RST, no FIN); TCP would deliver them
    after the hole closes, and so does the proxy.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.forwarding = threading.Event()
        self.forwarding.set()
        self.connections = 0
        self._closed = threading.Event()
        self._socks: list[socket.socket] = []
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def black_hole(self) -> float:
        self.forwarding.clear()
        return time.time()

    def heal(self) -> None:
        self.forwarding.set()

    def _accept(self) -> None:
        while not self._closed.is_set():
            self.forwarding.wait()
            ready, _, _ = select.select([self.listener], [], [], 0.2)
            if not ready or not self.forwarding.is_set():
                continue
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                continue
            self.connections += 1
            self._socks += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while not self._closed.is_set():
                self.forwarding.wait()
                ready, _, _ = select.select([src], [], [], 0.2)
                if not ready or not self.forwarding.is_set():
                    continue
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass  # either side went away: close both
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed.set()
        self.forwarding.set()
        for s in [self.listener, *self._socks]:
            s.close()


class MjpegCamera:
    """An HTTP MJPEG camera (multipart/x-mixed-replace, as IP cameras serve it).

    Each connection streams ``per_connection`` frames at ``fps`` (frame p is defective when p % 5 == 4),
    then, when ``hang`` is on, stops sending without closing the socket: a camera whose encoder froze.
    """

    def __init__(self, per_connection: int = 15, fps: float = 10.0) -> None:
        self.per_connection, self.fps = per_connection, fps
        self.requests = 0
        self.hung_at: list[float] = []  # wall time each connection went silent
        self._stop = threading.Event()
        camera = self
        ok_frames = [cv2.imencode(".jpg", render(p, p % 5 == 4), [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
                     for p in range(per_connection)]  # fmt: skip

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                camera.requests += 1
                self.send_response(200)
                self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
                self.end_headers()
                try:
                    for jpg in ok_frames:
                        head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpg)}\r\n\r\n"
                        self.wfile.write(head.encode() + jpg + b"\r\n")
                        self.wfile.flush()
                        time.sleep(1.0 / camera.fps)
                    camera.hung_at.append(time.time())
                    camera._stop.wait()  # silent, socket open
                except OSError:
                    return

            def log_message(self, format: str, *args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/stream.mjpg"

    def close(self) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
