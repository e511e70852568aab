"""What the SCADA outputs cost per verdict: JSON vs Sparkplug B encoding, and the OPC UA update.

- encode: a realistic result body as JSON (``payloads.dumps``, what JSON mode writes to the outbox)
  against Sparkplug (``SparkplugNode.frame_data`` at write time + ``stamp`` at send time), interleaved
  (A B A B) in one process; medians and p99 in microseconds, and their ratio;
- opcua: ``OpcUaServer.verdict`` (the postprocess thread waits until the variables hold the verdict,
  the cost added to the frame path), and an asyncua client's read right after it on loopback (it
  must see that frame: the OPC UA value is never later than the MQTT result, which is only written
  to the outbox after ``verdict`` returns).

    python benchmarks/scada_outputs.py [--n 5000] [--opcua-n 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from linewatch.deploy.localbroker import free_port
from linewatch.edge.config import OpcUaConfig
from linewatch.edge.publish import payloads
from linewatch.edge.publish.sparkplug.node import SparkplugNode


def body(i: int) -> dict:
    return {
        "schema": payloads.RESULT, "ts": payloads.utc_iso(), "frame_id": i, "camera": "cam0",
        "model": {"name": "toy", "version": 3}, "backend": "ort-cpu", "score": 0.1 + (i % 7) / 10,
        "threshold": 0.5, "anomalous": i % 7 >= 4, "task": 0, "task_name": "brick",
        "regions": [{"bbox": [1, 2, 30, 40], "area": 300, "peak": 0.9}] * (i % 7 >= 4),
        "latency_ms": {"capture": 1.2, "infer": 8.1, "postprocess": 0.7}, "frame_size": {"width": 640, "height": 480},
        "source": {"pos": i, "file": None}, "heatmap": False,
    }  # fmt: skip


def stats(us: list[float]) -> dict:
    return {"median_us": round(statistics.median(us), 2), "p99_us": round(float(np.percentile(us, 99)), 2)}


def bench_encode(n: int) -> dict:
    node = SparkplugNode("g", "n", ["cam0"])
    node.births()
    js, sp = [], []
    for i in range(n):
        b = body(i)
        t0 = time.perf_counter()
        payloads.dumps(b)
        t1 = time.perf_counter()
        values = {
            "Inspection/Frame ID": b["frame_id"], "Inspection/Score": b["score"],
            "Inspection/Anomalous": b["anomalous"], "Inspection/Regions": len(b["regions"]),
            "Inspection/Task": b["task_name"],
        }  # fmt: skip
        node.stamp(node.frame_data("cam0", time.time(), values), historical=False)
        t2 = time.perf_counter()
        js.append((t1 - t0) * 1e6)
        sp.append((t2 - t1) * 1e6)
    out = {"json": stats(js), "sparkplug": stats(sp)}
    out["sparkplug_over_json_median"] = round(out["sparkplug"]["median_us"] / out["json"]["median_us"], 2)
    return out


def bench_opcua(n: int) -> dict:
    from asyncua import Client

    from linewatch.edge.publish.opcua_server import OpcUaServer

    port = free_port()
    url = f"opc.tcp://127.0.0.1:{port}/linewatch/"
    cam = SimpleNamespace(name="cam0", gate=None, results=0, anomalies=0, threshold=0.5)
    server = OpcUaServer(OpcUaConfig(endpoint=url, security_policies=["None"], allow_anonymous=True), [cam])
    server.start()
    push, read, stale = [], [], 0

    async def run() -> None:
        nonlocal stale
        async with Client(url) as client:
            ns = await client.get_namespace_index("urn:linewatch:edge")
            node = await client.nodes.objects.get_child([f"{ns}:Linewatch", f"{ns}:cam0", f"{ns}:FrameId"])
            for i in range(n):
                t0 = time.perf_counter()
                await asyncio.to_thread(server.verdict, cam, body(i))
                t1 = time.perf_counter()
                seen = await node.read_value()
                t2 = time.perf_counter()
                stale += seen != i
                push.append((t1 - t0) * 1e6)
                read.append((t2 - t1) * 1e6)

    try:
        asyncio.run(run())
    finally:
        server.stop()
    return {"verdict_push": stats(push), "client_read_after": stats(read), "stale_reads": stale, "n": n}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--opcua-n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=Path("scada_outputs.json"))
    args = ap.parse_args(argv)
    result = {
        "machine": platform.platform(), "python": platform.python_version(),
        "encode": bench_encode(args.n), "opcua": bench_opcua(args.opcua_n),
    }  # fmt: skip
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
