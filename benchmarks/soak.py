"""Soak: the edge CLI for N minutes on a line camera, with random broker crashes, measured from outside.

What it answers (issue 17, "faults for hours, not seconds"): over a long run with outages, does the
edge lose verdicts, leak memory or file descriptors, grow its outbox without bound, or fill the
journal? Everything is measured from outside the edge process: a persistent-session QoS 1
subscriber counts delivered, lost and duplicated verdicts; /proc gives RSS, descriptors and CPU;
the edge's JSON log on stderr gives the lines written; the outbox file's size is read from disk.

Set-up: mosquitto with persistence on a loopback port, the toy bundle of the edge tests (or
``--bundle``), a ``dir:`` camera written at ``--fps`` (each image removed once its verdict arrived,
as an archiver would, so the folder stays small), and outages at random times: the broker is
SIGKILLed (after it saved the subscriber's session, so a loss is the edge's, not mosquitto's
autosave window) and restarted ``--outage-s`` later. Latency is image written -> verdict received;
its p99 "outside outages" leaves out images written from an outage's start until ``--settle-s``
after the edge was back on the broker (those wait in the outbox by design; how long the reconnect
backoff lagged the broker's return is reported per outage).

    python benchmarks/soak.py                   # 30 minutes
    python benchmarks/soak.py --minutes 3       # a short proof run

Writes benchmarks/results/soak.json (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
for extra in (REPO, REPO / "tests", REPO / "tests" / "edge", REPO / "tests" / "edge" / "chaos"):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

from chaoskit import EdgeProcess  # noqa: E402  (the chaos suite's edge-subprocess harness)
from edge_testkit import make_bundle, write_frame  # noqa: E402

ROOT_TOPIC = "linewatch/site/line/station"


class Broker:
    """mosquitto with persistence on a fixed port outside the ephemeral range (restarts rebind it)."""

    def __init__(self, work: Path) -> None:
        self.work = work
        low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        ports = [p for p in range(20000, 32000) if not low <= p <= high] or list(range(1025, low))
        for port in random.Random(os.getpid()).sample(ports, len(ports)):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
            self.port = port
            break
        self.db = work / "mosquitto.db"
        (work / "mosquitto.conf").write_text(
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {work}/\nautosave_interval 1\nmax_queued_messages 0\n"
            + ("user root\n" if os.geteuid() == 0 else "")
        )
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def _accepting(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.port), 0.5).close()
            return True
        except OSError:
            return False

    def start(self) -> None:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self.proc = subprocess.Popen([exe, "-c", str(self.work / "mosquitto.conf")],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
            for _ in range(100):
                if self._accepting():
                    return
                if self.proc.poll() is not None:
                    break
                time.sleep(0.05)
            self.proc.kill()
            self.proc.wait(10)
            time.sleep(0.5)
        raise RuntimeError("mosquitto did not start")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)
            self.proc = None


class Subscriber:
    """Persistent-session QoS 1 subscriber: first arrival time per image, and duplicate count."""

    def __init__(self, broker: Broker) -> None:
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.arrived: dict[str, float] = {}
        self.ids: dict[str, int] = {}
        self.messages = 0
        self.duplicates = 0
        self.connected_at = 0.0
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"soak-{uuid.uuid4().hex[:8]}",
                                  clean_session=False)  # fmt: skip
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.1, 1.0)
        self.client.connect("127.0.0.1", broker.port, 30)
        self.client.loop_start()

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if not reason.is_failure:
            client.subscribe(f"{ROOT_TOPIC}/+/result", qos=1)
            self.connected_at = time.time()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        name = (doc.get("source") or {}).get("file")
        if name is None:
            return
        self.messages += 1
        if name in self.arrived:
            self.duplicates += 1
            return
        self.arrived[name] = time.time()
        self.ids[name] = doc["frame_id"]


def pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p99": None, "max": None, "n": 0}
    a = np.asarray(values)
    return {"p50": round(float(np.percentile(a, 50)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2), "n": len(values)}  # fmt: skip


def sample(edge: EdgeProcess, outbox: Path) -> dict[str, Any]:
    status = Path(f"/proc/{edge.pid}/status").read_text()
    rss_kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    files = [outbox, outbox.with_name(outbox.name + "-wal"), outbox.with_name(outbox.name + "-shm")]
    return {
        "t": time.time(),
        "rss_mb": round(rss_kb / 1024, 1),
        "fds": len(os.listdir(f"/proc/{edge.pid}/fd")),
        "threads": int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:"))),
        "cpu_s": round(edge.cpu_s(), 2),
        "outbox_bytes": sum(f.stat().st_size for f in files if f.exists()),
        "outbox_depth": int(edge.prom().get("linewatch_edge_outbox_depth", 0)),
    }


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    broker = Broker(work)
    broker.start()
    sub = Subscriber(broker)
    spool = work / "spool"
    spool.mkdir()
    bundle = args.bundle or make_bundle(work / "toy-v1")
    edge = EdgeProcess(work, bundle, f"dir:{spool}", broker.url, logging={"repeat_every_s": 60},
                       mqtt={"reconnect_min_s": 0.2, "reconnect_max_s": 30.0}, metrics={"period_s": 10})  # fmt: skip
    edge.start()
    written: dict[str, float] = {}
    outages: list[dict[str, float]] = []
    samples: list[dict[str, Any]] = []
    stop = threading.Event()

    def camera() -> None:
        n, period = 0, 1.0 / args.fps
        next_due = time.monotonic()
        on_disk: deque[str] = deque()
        while not stop.is_set():
            name = f"{n:06d}.png"
            write_frame(spool, n, n % 7 == 6)
            written[name] = time.time()
            on_disk.append(name)
            n += 1
            while on_disk and on_disk[0] in sub.arrived:  # verdicts arrive in order
                (spool / on_disk.popleft()).unlink(missing_ok=True)  # the archiver takes them away
            next_due += period
            stop.wait(max(0.0, next_due - time.monotonic()))

    producer = threading.Thread(target=camera, daemon=True)
    t0 = time.time()
    end = t0 + args.minutes * 60
    producer.start()
    next_outage = t0 + rng.uniform(0.5, 1.5) * args.outage_every
    next_sample = t0
    while time.time() < end:
        now = time.time()
        if now >= next_sample:
            samples.append(sample(edge, edge.work / "outbox.sqlite"))
            next_sample += args.sample_s
        if now >= next_outage and now + args.outage_s[1] + args.settle_s < end:
            saved_after = time.time()
            while time.time() < saved_after + 60 and not (
                sub.client.is_connected() and broker.db.exists() and broker.db.stat().st_mtime > saved_after
            ):
                time.sleep(0.1)  # kill only what mosquitto has saved (see the module docstring)
            down = rng.uniform(*args.outage_s)
            start = time.time()
            broker.kill()
            time.sleep(down)
            broker.start()
            outages.append({"start": start, "end": time.time()})
            next_outage = time.time() + rng.uniform(0.5, 1.5) * args.outage_every
        time.sleep(0.2)
    stop.set()
    producer.join(30)
    drain_deadline = time.time() + 180
    while time.time() < drain_deadline and not set(written) <= set(sub.arrived):
        time.sleep(0.5)
    samples.append(sample(edge, edge.work / "outbox.sqlite"))
    prom = edge.prom()
    rc = edge.stop()
    sub.client.loop_stop()
    broker.stop()

    wall_h = (time.time() - t0) / 3600
    log = edge.log()
    connected = sorted(_ts(r) for r in log if r.get("msg", "").startswith("broker connected"))
    for o in outages:  # when the edge was back on the broker (its reconnect backoff may lag the broker)
        o["reconnected"] = next((t for t in connected if t >= o["end"]), o["end"])
    in_outage = [r for r in log if any(o["start"] <= _ts(r) <= o["reconnected"] for o in outages)]
    running = next(i for i, r in enumerate(log) if r.get("msg") == "edge running")
    startup = log[: running + 1]  # model check, backend, first connect: once per start
    down_min = sum(o["reconnected"] - o["start"] for o in outages) / 60

    def quiet(t: float) -> bool:
        return not any(o["start"] - 1 <= t <= o["reconnected"] + args.settle_s for o in outages)

    lat = {n: (sub.arrived[n] - w) * 1000 for n, w in written.items() if n in sub.arrived}
    base = next((s for s in samples if s["t"] >= t0 + min(120, args.minutes * 6)), samples[0])
    ids = sorted(sub.ids.values())
    return {
        "delivered": len(set(written) & set(sub.arrived)),
        "written": len(written),
        "lost": len(set(written) - set(sub.arrived)),
        "duplicates": sub.duplicates,
        "frame_ids_unique": len(ids) == len(set(ids)),
        "outages": {
            "count": len(outages),
            "total_s": round(sum(o["end"] - o["start"] for o in outages), 1),
            "each_s": [round(o["end"] - o["start"], 1) for o in outages],
            "reconnect_lag_s": [round(o["reconnected"] - o["end"], 1) for o in outages],
        },
        "latency_ms": {
            "outside_outages": pct([v for n, v in lat.items() if quiet(written[n])]),
            "all": pct(list(lat.values())),
        },
        "rss_mb": {
            "baseline": base["rss_mb"],
            "end": samples[-1]["rss_mb"],
            "max": max(s["rss_mb"] for s in samples),
            "growth": round(samples[-1]["rss_mb"] - base["rss_mb"], 1),
        },
        "fds": {"baseline": base["fds"], "end": samples[-1]["fds"], "max": max(s["fds"] for s in samples)},
        "threads": {"baseline": base["threads"], "end": samples[-1]["threads"]},
        "outbox": {
            "max_bytes": max(s["outbox_bytes"] for s in samples),
            "end_bytes": samples[-1]["outbox_bytes"],
            "max_depth": max(s["outbox_depth"] for s in samples),
            "dropped": int(prom.get("linewatch_edge_outbox_dropped", 0)),
            "not_stored": int(prom.get("linewatch_edge_outbox_not_stored", 0)),
        },
        "log": {
            "lines": len(log),
            "startup_lines": len(startup),
            "lines_per_hour_after_start": round((len(log) - len(startup)) / wall_h, 1),
            "lines_during_outages": len(in_outage),
            "outage_lines_per_outage_minute": round(len(in_outage) / max(down_min, 1e-9), 1),
        },
        "cpu_cores_avg": round(
            (samples[-1]["cpu_s"] - base["cpu_s"]) / max(samples[-1]["t"] - base["t"], 1e-9), 4
        ),
        "connect_failures": int(prom.get('linewatch_edge_mqtt_connect_failures{camera="line1"}', 0)),
        "edge_exit_code": rc,
        "samples": samples,
    }


def _ts(record: dict[str, Any]) -> float:
    from chaoskit import parse_ts

    return parse_ts(record["ts"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--fps", type=float, default=5.0, help="images the camera writes per second")
    p.add_argument("--outage-every", type=float, default=120.0, help="mean seconds between broker crashes")
    p.add_argument("--outage-s", type=lambda s: tuple(float(v) for v in s.split(",")), default=(2.0, 20.0),
                   help="min,max seconds the broker stays down")  # fmt: skip
    p.add_argument("--settle-s", type=float, default=10.0, help="after an outage, latency is not 'outside'")
    p.add_argument("--sample-s", type=float, default=10.0)
    p.add_argument("--bundle", type=Path, help="bundle to run (default: the edge tests' toy bundle)")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "soak.json")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="edge-soak-"))
    try:
        t0 = time.time()
        result = run(args, work)
        report = {
            "benchmark": "soak",
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "config": {
                k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"
            },
            "wall_s": round(time.time() - t0, 1),
            **result,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps({k: v for k, v in report.items() if k != "samples"}, indent=2))
        return 0 if report["lost"] == 0 and report["edge_exit_code"] == 0 else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
