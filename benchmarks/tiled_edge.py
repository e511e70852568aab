"""Tiled inspection on the edge: what a 2048x1536 frame costs as the tile count grows.

For PatchCore and PaDiM (fitted here on small generated frames with the tile geometry, exported by
the real exporter with ``max_batch`` = 48), the edge's own whole-frame scorer (``edge/inference/frame_scorer.py``:
cut into a reused buffer, one onnxruntime batch, stitch at frame resolution) scores generated
2048x1536 BGR frames under several geometries of the same graph:

    resize            1 input  (the frame squeezed to 256x256: today's behaviour)
    tile scale 0.25   4 tiles  (512x384 working frame)
    tile scale 0.5    12 tiles (1024x768)
    tile scale 1      48 tiles (native pixels)
    tile scale 1 + overlap 64 + margin 32: 88 tiles (run in chunks of max_batch = 48)

Per geometry and method: per-frame wall time (median, p99) and edge fps (1000 / median), the
split into cut / infer / stitch, inference cost per tile, and a least-squares line
``ms_per_frame = fixed + per_tile * tiles`` over the tile counts (how cost grows).

    python benchmarks/tiled_edge.py                      # both methods, 6 timed frames per geometry
    python benchmarks/tiled_edge.py --methods padim --frames 10 --budget 4000

Writes benchmarks/results/tiled_edge.json unless --out is given. Minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

FRAME_WH = (2048, 1536)
GEOMETRIES: list[tuple[str, dict[str, Any]]] = [
    ("resize", {"mode": "resize"}),
    ("tile_x0.25", {"mode": "tile", "scale": 0.25}),
    ("tile_x0.5", {"mode": "tile", "scale": 0.5}),
    ("tile_x1", {"mode": "tile", "scale": 1.0}),
    ("tile_x1_overlap64_margin32", {"mode": "tile", "scale": 1.0, "overlap": 64, "margin": 32}),
]


def _fit_and_export(method: str, work: Path, data: Path, budget: int, max_batch: int) -> tuple[Path, dict]:
    from linewatch.export.bundle_writer import write_bundle
    from linewatch.export.checks import CheckLimits
    from linewatch.export.run_source import load_run_for_export
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.continual import fit

    cfg = TrainConfig(
        method=method,
        image_size=(256, 256),
        progress=False,
        report=False,
        min_val=2,
        patchcore={"budget": budget},
        geometry={"mode": "tile"},
    )
    t0 = time.perf_counter()
    metrics = fit(cfg, f"mvtec:{data}", ["moon"], work / f"run-{method}", log=lambda _m: None)
    fit_s = time.perf_counter() - t0
    run = load_run_for_export(work / f"run-{method}")
    t0 = time.perf_counter()
    written = write_bundle(
        run.graph,
        work / f"bundle-{method}",
        info=run.info,
        golden_inputs=run.golden_inputs,
        max_batch=max_batch,
        limits=CheckLimits(max_top_k_bytes=64 * 2**30),  # a CPU box here, not an 8 GB Jetson
    )
    facts = {
        "fit_seconds": round(fit_s, 1),
        "export_seconds": round(time.perf_counter() - t0, 1),
        "bundle_bytes": written.size_bytes,
        "data_inputs": {e["name"]: e["shape"] for e in written.manifest["data_inputs"]},
        "trained_geometry": written.manifest["geometry"],
        "fit_final": {k: metrics["final"].get(k) for k in ("image_auroc", "pixel_auroc")},
    }
    return written.path, facts


def _frames(n: int, seed: int = 11) -> list[np.ndarray]:
    import cv2

    from linewatch.trainer.data.synth import render_part

    out = []
    for i in range(n):
        kind = "stain" if i % 2 else None
        rgb, _ = render_part("moon", FRAME_WH, seed, 2 if kind else 1, i, kind, 0.03)
        out.append(cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    return out


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(a)), 3), "p99": round(float(np.percentile(a, 99)), 3)}


def measure(bundle_dir: Path, frames: list[np.ndarray], n: int, threads: int) -> dict[str, Any]:
    from linewatch.contract.geometry import Geometry
    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends.onnxruntime import OrtBackend
    from linewatch.edge.inference.frame_scorer import FrameScorer
    from linewatch.edge.model.bundle import open_bundle

    bundle = open_bundle(bundle_dir)
    backend = OrtBackend(bundle, "ort-cpu", BackendConfig(threads=threads))
    out: dict[str, Any] = {}
    for name, doc in GEOMETRIES:
        geometry = Geometry.from_dict(doc, bundle.input_hw)
        scorer = FrameScorer(bundle, backend, geometry)
        scorer.score(frames[0])  # warm-up: plan, buffers, onnxruntime allocations at this batch
        total, cut, infer, stitch = [], [], [], []
        for i in range(n):
            t0 = time.perf_counter()
            r = scorer.score(frames[i % len(frames)])
            total.append((time.perf_counter() - t0) * 1e3)
            cut.append(r.cut_ms)
            infer.append(r.infer_ms)
            stitch.append(r.stitch_ms)
        tiles = r.tiles
        med = float(np.median(total))
        out[name] = {
            "geometry": geometry.as_dict(),
            "tiles_per_frame": tiles,
            "batches_per_frame": -(-tiles // bundle.max_batch),
            "frame_ms": _stats(total),
            "fps": round(1000.0 / med, 3),
            "cut_ms": _stats(cut),
            "infer_ms": _stats(infer),
            "stitch_ms": _stats(stitch),
            "infer_ms_per_tile": {k: round(v / tiles, 3) for k, v in _stats(infer).items()},
            "frames": n,
        }
        print(f"  {name:28s} {tiles:3d} tiles  {med:9.1f} ms/frame  {1000 / med:7.3f} fps", flush=True)
    backend.close()
    out["growth"] = growth(out)
    return out


def growth(per_geometry: dict[str, Any]) -> dict[str, Any]:
    """Least-squares ``median frame ms = fixed + per_tile * tiles`` over the one-batch geometries."""
    rows = [v for k, v in per_geometry.items() if k != "growth"]
    single = [v for v in rows if v["batches_per_frame"] == 1]
    xs = np.array([v["tiles_per_frame"] for v in single], dtype=np.float64)
    ys = np.array([v["frame_ms"]["median"] for v in single], dtype=np.float64)
    slope, intercept = np.polyfit(xs, ys, 1)
    return {
        "model": "median frame ms = fixed + per_tile * tiles, fitted over the geometries run as one batch",
        "per_tile_ms": round(float(slope), 3),
        "fixed_ms": round(float(intercept), 3),
        "points": [[v["tiles_per_frame"], v["frame_ms"]["median"], v["batches_per_frame"]] for v in rows],
        "points_columns": ["tiles", "median_frame_ms", "batches"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default="patchcore,padim")
    p.add_argument("--frames", type=int, default=6, help="timed frames per geometry")
    p.add_argument("--budget", type=int, default=8000, help="PatchCore memory bank (default config: 30000)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="onnxruntime intra-op threads")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "tiled_edge.json")
    p.add_argument("--workdir", type=Path, help="keep runs and bundles here (default: a temp dir)")
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)  # fitting only; on a loaded 2-core box one thread is several times faster
    from linewatch.trainer.data.generate import generate_dataset

    result: dict[str, Any] = {
        "benchmark": "tiled_edge",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_start": os.getloadavg(),
        },
        "backend": "ort-cpu",
        "threads": args.threads,
        "frame_wh": list(FRAME_WH),
        "tile_hw": [256, 256],
        "patchcore_budget": args.budget,
        "methods": {},
    }
    with tempfile.TemporaryDirectory(prefix="tiled-edge-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        data = work / "data"
        if not (data / "moon").is_dir():
            generate_dataset(
                data, ["moon"], n_train=8, n_test_good=2, n_test_defect=2, size=(1024, 768), seed=0
            )
        frames = _frames(4)
        for method in [m.strip() for m in args.methods.split(",") if m.strip()]:
            print(f"{method}: fit + export", flush=True)
            bundle, facts = _fit_and_export(method, work, data, args.budget, max_batch=48)
            print(f"{method}: {facts}", flush=True)
            result["methods"][method] = {**facts, "edge": measure(bundle, frames, args.frames, args.threads)}
    result["machine"]["load_avg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
