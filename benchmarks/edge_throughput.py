"""Edge throughput: the concurrent pipeline versus a plain sequential loop, same model, same video.

Measures, per mode, in a fresh child process each (so CPU time and peak RSS are the mode's own):
- fps (frames verdicted and acknowledged by the broker per second of wall time),
- p50/p99 of every stage (capture, queue, preprocess, infer, postprocess, publish) and end to end
  (frame captured -> PUBACK received),
- CPU seconds per second of wall time, and peak RSS.

Modes:
- ``pipeline``: the real runtime (``edge.runtime.EdgeRuntime``), video read as fast as possible
  (throughput; frames wait in the bounded queues, so end-to-end latency includes queueing);
- ``pipeline_paced``: the same, video paced at its own fps like a live camera (latency at a
  realistic rate);
- ``sequential``: read, preprocess, infer, post-process, publish QoS 1 and wait for the PUBACK,
  one frame at a time;
- ``cameras_N`` (e.g. ``--modes cameras_1,cameras_2,cameras_4,cameras_8 --fps 5``): N cameras, each
  the video paced at ``--fps``, through one runtime: total and per-camera fps, the worst camera's
  p50/p99 capture -> PUBACK, and drops (``--batch`` batches across cameras).

Usage::

    python benchmarks/edge_throughput.py                          # builds a PatchCore 256x256 bundle
    python benchmarks/edge_throughput.py --bundle BUNDLE_DIR      # any bundle
    python benchmarks/edge_throughput.py --build toy              # a tiny graph, seconds to build

The PatchCore build runs ``trainer`` (synthetic ``brick`` task) and ``export``: a few minutes on
2 CPU cores. Writes ``benchmarks/results/edge_throughput.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from linewatch.deploy.localbroker import LocalBroker  # noqa: E402 - after the sys.path line above

STAGES = ("capture", "queue", "preprocess", "infer", "postprocess", "publish", "end_to_end")


# ----------------------------------------------------------------------------- inputs


def build_patchcore(work: Path, size: int) -> Path:
    """Synthetic brick task -> PatchCore (cl) fit -> export. Returns the bundle directory."""
    py = sys.executable
    data, run, bundle = work / "data", work / "run", work / "bundle"
    steps = [
        [py, "-m", "linewatch.trainer.data.generate", "--out", str(data), "--tasks", "brick", "--n-train", "16",
         "--n-test-good", "4", "--n-test-defect", "4", "--size", str(size)],
        [py, "-m", "linewatch.trainer", "fit", "--data", f"mvtec:{data}", "--tasks", "brick", "--method", "patchcore",
         "--strategy", "cl", "--image-size", str(size), "--out", str(run), "--no-progress", "--no-report"],
        [py, "-m", "linewatch.export", "--run", str(run), "--out", str(bundle), "--max-batch", "4"],
    ]  # fmt: skip
    for cmd in steps:
        print("+", " ".join(cmd[1:4]), "...", file=sys.stderr)
        subprocess.run(cmd, check=True, cwd=REPO)
    return bundle


def build_toy(work: Path, size: int) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "edge"))
    import edge_testkit

    return edge_testkit.make_bundle(work / "toy-v1", hw=(size, size))


def make_video(path: Path, frames: int, frame_wh: tuple[int, int], fps: float) -> list[bool]:
    """Synthetic line video with known defect frames (trainer's generator when present)."""
    try:
        from linewatch.trainer.data.video import generate_video

        truths = generate_video(path, "brick", n_frames=frames, defect_every=5, size=frame_wh, fps=fps)
        return [t.defective for t in truths]
    except ImportError:
        sys.path.insert(0, str(REPO / "tests" / "edge"))
        import edge_testkit

        return [t.defective for t in edge_testkit.write_video(path, frames, 5, frame_wh, fps)]


# ----------------------------------------------------------------------------- modes (child processes)


def _percentiles(samples: list[float]) -> dict[str, float | None]:
    import numpy as np

    if not samples:
        return {"p50": None, "p99": None, "n": 0}
    p50, p99 = np.percentile(np.asarray(samples), [50, 99])
    return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "n": len(samples)}


def run_pipeline(
    bundle: Path, video: Path, url: str, batch: int, threads: int, paced: bool, work: Path, cameras: int = 1
) -> dict[str, Any]:
    from linewatch.edge.config import load_config
    from linewatch.edge.runtime import EdgeRuntime

    cfg = load_config(
        None,
        {
            "mqtt": {"url": url},
            "backend": {"order": ["ort-cpu"], "threads": threads},
            "batch": {"size": batch},
            "camera": {"at_end": "stop", "realtime": paced},
            "metrics": {"port": None, "window": 100_000, "period_s": 3600},
            "outbox": {"path": str(work / f"outbox-{os.getpid()}.sqlite")},
            "logging": {"level": "WARNING"},
        },
    )
    import logging

    logging.getLogger().setLevel(logging.WARNING)
    names = ["bench"] if cameras == 1 else [f"bench{i}" for i in range(cameras)]
    rt = EdgeRuntime(cfg, bundle, [str(video)] * cameras, names)
    rt.start()
    cam = rt.cameras[0]
    t0 = time.perf_counter()
    while not (
        rt.sources_finished()
        and rt.postprocess.processed >= sum(c.source.stats.frames for c in rt.cameras)
        and rt.outbox.depth() == 0
    ):
        time.sleep(0.002)
        if time.perf_counter() - t0 > 1800:
            raise RuntimeError("pipeline did not finish")
    wall = time.perf_counter() - t0
    windows = rt.telemetry.camera("bench").stages
    out = {
        "frames": cam.results,
        "wall_s": round(wall, 3),
        "fps": round(cam.results / wall, 3),
        "latency_ms": {s: windows[s].percentiles() for s in STAGES},
        "dropped": cam.queue.dropped,
        "backend": rt.models.loaded.backend_name,
    }
    if cameras > 1:  # one box, several live cameras: totals and the worst camera's latency
        per_cam = {c.name: rt.telemetry.camera(c.name).stages["end_to_end"].percentiles() for c in rt.cameras}
        results = sum(c.results for c in rt.cameras)
        out = {
            "cameras": cameras,
            "frames": results,
            "captured": sum(c.source.stats.frames for c in rt.cameras),
            "wall_s": round(wall, 3),
            "fps_total": round(results / wall, 3),
            "fps_per_camera": round(results / wall / cameras, 3),
            "end_to_end_ms_per_camera": per_cam,
            "end_to_end_p50_ms_worst": max(v["p50"] or 0 for v in per_cam.values()),
            "end_to_end_p99_ms_worst": max(v["p99"] or 0 for v in per_cam.values()),
            "dropped": sum(c.queue.dropped for c in rt.cameras),
            "backend": rt.models.loaded.backend_name,
        }
    rt.shutdown()
    return out


def run_sequential(bundle_path: Path, video: Path, url: str, threads: int) -> dict[str, Any]:
    import cv2
    import numpy as np
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends import select_backend
    from linewatch.edge.inference.postprocess import find_regions, overlay_jpeg
    from linewatch.edge.model.bundle import open_bundle
    from linewatch.edge.publish import payloads

    bundle = open_bundle(bundle_path)
    backend = select_backend(bundle, BackendConfig(order=["ort-cpu"], threads=threads)).backend
    h, w = bundle.input_hw
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"bench-seq-{os.getpid()}")
    host, port = url.split("//")[1].split(":")
    client.connect(host, int(port))
    client.loop_start()
    cap = cv2.VideoCapture(str(video))
    buf = np.empty((1, h, w, 3), np.uint8)
    lat: dict[str, list[float]] = {s: [] for s in STAGES}
    n = 0
    t0 = time.perf_counter()
    while True:
        ta = time.perf_counter()
        ok, frame = cap.read()
        tb = time.perf_counter()
        if not ok:
            break
        cv2.resize(frame, (w, h), dst=buf[0])
        cv2.cvtColor(buf[0], cv2.COLOR_BGR2RGB, dst=buf[0])
        tc = time.perf_counter()
        maps, scores, tasks = backend.infer(buf)
        td = time.perf_counter()
        score = float(scores[0])
        anomalous = score >= 0.5
        regions = [r.as_dict() for r in find_regions(maps[0], frame.shape[:2])] if anomalous else []
        heat = overlay_jpeg(frame, maps[0]) if anomalous else None
        body = {"schema": payloads.RESULT, "ts": payloads.utc_iso(), "frame_id": n, "score": score,
                "anomalous": anomalous, "regions": regions, "task": int(tasks[0])}  # fmt: skip
        te = time.perf_counter()
        info = client.publish("bench/seq/result", payloads.dumps(body), qos=1)
        if heat is not None:
            client.publish("bench/seq/heatmap", heat, qos=1).wait_for_publish(30)
        info.wait_for_publish(30)
        tf = time.perf_counter()
        for stage, ms in (("capture", tb - ta), ("preprocess", tc - tb), ("infer", td - tc),
                          ("postprocess", te - td), ("publish", tf - te), ("end_to_end", tf - tb)):  # fmt: skip
            lat[stage].append(ms * 1000.0)
        n += 1
    wall = time.perf_counter() - t0
    client.loop_stop()
    client.disconnect()
    return {
        "frames": n,
        "wall_s": round(wall, 3),
        "fps": round(n / wall, 3),
        "latency_ms": {s: _percentiles(v) for s, v in lat.items()},
        "backend": backend.name,
    }


def child(args: argparse.Namespace) -> None:
    work = Path(args.work)
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    if args.mode == "sequential":
        out = run_sequential(Path(args.bundle), Path(args.video), args.mqtt, args.threads)
    else:
        paced = args.mode == "pipeline_paced" or args.mode.startswith("cameras_")
        cameras = int(args.mode.split("_")[1]) if args.mode.startswith("cameras_") else 1
        out = run_pipeline(
            Path(args.bundle), Path(args.video), args.mqtt, args.batch, args.threads, paced, work, cameras
        )
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    out["cpu_s"] = round(cpu, 3)
    out["cpu_cores_used"] = round(cpu / wall, 3)
    out["peak_rss_mb"] = round(r1.ru_maxrss / 1024.0, 1)
    print("RESULT " + json.dumps(out))


def spawn(
    mode: str, args: argparse.Namespace, bundle: Path, video: Path, url: str, work: Path
) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", mode, "--bundle", str(bundle), "--video", str(video),
           "--mqtt", url, "--batch", str(args.batch), "--threads", str(args.threads), "--work", str(work)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} failed:\n{proc.stderr[-4000:]}")


def ratio(a: float | None, b: float | None) -> float | None:
    return None if not a or not b else round(a / b, 3)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", type=Path, help="bundle to run (default: build one, see --build)")
    p.add_argument("--build", choices=["patchcore", "toy"], default="patchcore")
    p.add_argument("--size", type=int, default=256, help="model resolution when building")
    p.add_argument("--video", type=Path, help="video to score (default: a generated one)")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--frame-size", default="640x480", help="WxH of the generated video")
    p.add_argument("--fps", type=float, default=10.0, help="fps of the generated video (paced mode)")
    p.add_argument("--batch", type=int, default=1, help="pipeline micro-batch size")
    p.add_argument(
        "--threads", type=int, default=1, help="onnxruntime intra-op threads, both modes (0 = ORT default)"
    )
    p.add_argument("--mqtt", help="broker URL (default: start a local mosquitto)")
    p.add_argument(
        "--modes",
        default="pipeline,pipeline_paced,sequential",
        help="also cameras_N: N live cameras (the video paced at --fps each) through one box",
    )
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "edge_throughput.json")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--work", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        args.mode = args.child
        child(args)
        return 0
    work = Path(tempfile.mkdtemp(prefix="edge-bench-"))
    broker = None
    try:
        t_build = time.perf_counter()
        bundle = args.bundle or (build_patchcore if args.build == "patchcore" else build_toy)(
            work / "build", args.size
        )
        build_s = time.perf_counter() - t_build
        video = args.video
        if video is None:
            wh = tuple(int(v) for v in args.frame_size.lower().split("x"))
            video = work / "line.avi"
            make_video(video, args.frames, (wh[0], wh[1]), args.fps)
        if args.mqtt:
            url = args.mqtt
        else:
            broker = LocalBroker(work / "mosquitto").start()
            url = broker.url
        from linewatch.edge.model.bundle import open_bundle

        b = open_bundle(bundle)
        results = {}
        for mode in args.modes.split(","):
            print(f"running {mode} ...", file=sys.stderr)
            results[mode] = spawn(mode, args, bundle, video, url, work)
        report: dict[str, Any] = {
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
            },
            "bundle": {
                "path": str(bundle),
                "name": b.name,
                "version": b.version,
                "method": b.manifest.get("method"),
                "input_hw": list(b.input_hw),
                "built_in_s": None if args.bundle else round(build_s, 1),
            },
            "video": {"path": str(video), "frames": args.frames, "frame_size": args.frame_size},
            "batch": args.batch,
            "ort_threads": args.threads,
            "modes": results,
        }
        seq, pipe = results.get("sequential"), results.get("pipeline")
        if seq and pipe:
            report["ratios_pipeline_over_sequential"] = {
                "fps": ratio(pipe["fps"], seq["fps"]),
                **{
                    f"{s}_{q}": ratio(pipe["latency_ms"][s][q], seq["latency_ms"][s][q])
                    for s in ("infer", "end_to_end")
                    for q in ("p50", "p99")
                },
                "cpu_cores_used": ratio(pipe["cpu_cores_used"], seq["cpu_cores_used"]),
                "peak_rss_mb": ratio(pipe["peak_rss_mb"], seq["peak_rss_mb"]),
            }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        return 0
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
