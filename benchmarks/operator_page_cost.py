"""What the operator page costs the frame path: throughput with the page off, on with nobody watching,
and on with one viewer, side by side in one run.

Modes (each a fresh ``EdgeRuntime`` scoring the same video as fast as it can, to the broker):
- ``off``: no operator credential, so the page is disabled and the postprocess stage records nothing;
- ``no_viewer``: the page enabled; every verdict is recorded (references only) but nobody looks;
- ``one_viewer``: the page enabled and one viewer in a separate process doing what the page's script
  does: read the server-sent events and fetch each new live frame's overlay JPEG (encoded on request).

Modes run interleaved for ``--rounds`` rounds (so drifting load on a shared machine hits each alike);
the report has each mode's median fps and CPU seconds per frame, and ratios to ``off``.

Usage::

    python benchmarks/operator_page_cost.py                      # toy graph, 640x480 video
    python benchmarks/operator_page_cost.py --bundle BUNDLE_DIR   # any bundle (e.g. a PatchCore export)

Writes ``benchmarks/results/operator_page_cost.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "edge"))

from linewatch.deploy.localbroker import LocalBroker  # noqa: E402 - after the sys.path lines above

MODES = ("off", "no_viewer", "one_viewer")
TOKEN = "bench-token"

VIEWER = r"""
import json, sys, time, urllib.request
base, token = sys.argv[1], sys.argv[2]
hdr = {"Authorization": "Bearer " + token}
events = urllib.request.urlopen(urllib.request.Request(base + "/operator/events", headers=hdr), timeout=60)
shown, images, nbytes = set(), 0, 0
print("READY", flush=True)
for raw in events:
    line = raw.decode().strip()
    if not line.startswith("data: "):
        continue
    state = json.loads(line[6:])
    for cam, s in state["latest"].items():
        key = (cam, s["frame_id"])
        if key in shown:
            continue
        shown.add(key)
        url = "%s/operator/frame/%s/%d.jpg" % (base, cam, s["frame_id"])
        try:
            nbytes += len(urllib.request.urlopen(urllib.request.Request(url, headers=hdr), timeout=60).read())
            images += 1
        except Exception:
            pass
    sys.stderr.write("VIEWER %d %d\n" % (images, nbytes)); sys.stderr.flush()
"""


def run_mode(mode: str, bundle: Path, video: Path, url: str, work: Path, threads: int) -> dict[str, Any]:
    import logging

    from linewatch.edge.config import load_config
    from linewatch.edge.runtime import EdgeRuntime

    operator = {} if mode == "off" else {"token": TOKEN, "audit_log": str(work / "audit.jsonl")}
    cfg = load_config(None, {
        "mqtt": {"url": url},
        "backend": {"order": ["ort-cpu"], "threads": threads},
        "camera": {"at_end": "stop"},
        "metrics": {"port": 0, "host": "127.0.0.1", "period_s": 3600},
        "outbox": {"path": str(work / f"outbox-{mode}-{time.monotonic_ns()}.sqlite")},
        "logging": {"level": "WARNING"},
        "operator": operator,
    })  # fmt: skip
    logging.getLogger().setLevel(logging.ERROR)
    rt = EdgeRuntime(cfg, bundle, [f"{video}"], ["bench"])
    # The source starts with the runtime; the viewer must be connected before the first frame, so
    # the runtime is started with its camera held back until the viewer says READY.
    cam = rt.cameras[0]
    start_source, cam.source.start = cam.source.start, lambda: None
    rt.start()
    viewer = None
    if mode == "one_viewer":
        viewer = subprocess.Popen(
            [sys.executable, "-c", VIEWER, f"http://127.0.0.1:{rt.server.port}", TOKEN],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert viewer.stdout is not None and viewer.stdout.readline().strip() == "READY"
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    start_source()
    while not (rt.sources_finished() and rt.postprocess.processed >= cam.source.stats.frames
               and rt.outbox.depth() == 0):  # fmt: skip
        time.sleep(0.002)
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError(f"{mode} did not finish")
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    viewers = rt.operator.viewers if rt.operator else 0
    out: dict[str, Any] = {"frames": cam.results, "wall_s": round(wall, 3), "fps": round(cam.results / wall, 2),
                           "edge_cpu_ms_per_frame": round(cpu * 1000 / max(cam.results, 1), 3),
                           "viewers_connected": viewers}  # fmt: skip
    if viewer is not None:
        viewer.terminate()
        _, err = viewer.communicate(timeout=30)
        last = [ln.split() for ln in err.splitlines() if ln.startswith("VIEWER ")]
        out["viewer_images"] = int(last[-1][1]) if last else 0
        out["viewer_bytes"] = int(last[-1][2]) if last else 0
    rt.shutdown()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle to run (default: the toy graph at --size)")
    p.add_argument("--size", type=int, default=256, help="model resolution of the toy graph")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--frame-size", default="640x480", help="WxH of the generated video")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "operator_page_cost.json")
    args = p.parse_args(argv)
    import edge_testkit

    work = Path(tempfile.mkdtemp(prefix="operator-bench-"))
    bundle = args.bundle or edge_testkit.make_bundle(work / "toy-v1", hw=(args.size, args.size))
    w, h = (int(v) for v in args.frame_size.lower().split("x"))
    video = work / "line.avi"
    edge_testkit.write_video(video, args.frames, 5, (w, h), 25)
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in MODES}
    with LocalBroker(work / "mosquitto") as broker:
        for r in range(args.rounds):
            for mode in MODES:
                print(f"round {r + 1}/{args.rounds}: {mode} ...", file=sys.stderr)
                runs[mode].append(run_mode(mode, bundle, video, broker.url, work, args.threads))
    summary = {
        m: {
            "fps_median": statistics.median(x["fps"] for x in runs[m]),
            "edge_cpu_ms_per_frame_median": statistics.median(x["edge_cpu_ms_per_frame"] for x in runs[m]),
        }
        for m in MODES
    }
    base = summary["off"]
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "bundle": str(bundle) if args.bundle else f"toy graph {args.size}x{args.size}",
        "video": {"frames": args.frames, "frame_size": args.frame_size},
        "rounds": args.rounds,
        "summary": summary,
        "ratios_to_off": {
            m: {
                "fps": round(summary[m]["fps_median"] / base["fps_median"], 3),
                "edge_cpu_per_frame": round(
                    summary[m]["edge_cpu_ms_per_frame_median"] / base["edge_cpu_ms_per_frame_median"], 3
                ),
            }
            for m in MODES
        },
        "runs": runs,
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: report[k] for k in ("summary", "ratios_to_off")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
