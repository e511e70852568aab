"""Export cost and CPU latency: the ONNX graph in onnxruntime against the torch module.

Both run on this machine, in this process, with the same thread count, interleaved
call by call so that thermal or background drift hits both equally. Per batch size
(1 and 8 by default) it reports the median and p99 latency per frame and per call,
and the torch/onnxruntime ratio; plus the export time and bundle size.

    python benchmarks/export_latency.py                        # fit a small PatchCore on generated data
    python benchmarks/export_latency.py --run RUN_DIR          # an existing trainer run
    python benchmarks/export_latency.py --method toy --repeats 50 --out /tmp/lat.json

Writes JSON to benchmarks/results/export_latency.json unless --out is given.
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


def _fit_run(method: str, workdir: Path, image_size: int, tasks: list[str]) -> tuple[Path, Path, float]:
    """Generate a small dataset and fit `method` on it; returns (run dir, data root, seconds)."""
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.continual import fit
    from linewatch.trainer.data.generate import generate_dataset

    data = workdir / "data"
    generate_dataset(data, tasks, n_train=16, n_test_good=4, n_test_defect=4, size=image_size, seed=0)
    cfg = TrainConfig(method=method, image_size=(image_size, image_size), progress=False, report=False)
    t0 = time.perf_counter()
    fit(cfg, f"mvtec:{data}", tasks, workdir / "run", log=lambda _m: None)
    return workdir / "run", data, time.perf_counter() - t0


def _stats(seconds: list[float], batch: int) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {
        "median_ms_per_call": float(np.median(ms)),
        "p99_ms_per_call": float(np.percentile(ms, 99)),
        "median_ms_per_frame": float(np.median(ms) / batch),
        "p99_ms_per_frame": float(np.percentile(ms, 99) / batch),
        "calls": len(ms),
    }


def measure(
    graph: Any, onnx_path: Path, frames: np.ndarray, batches: list[int], repeats: int, threads: int
) -> dict:
    """Interleaved torch vs onnxruntime timings of the same frames."""
    import torch

    from linewatch.export.parity import ort_session

    torch.set_num_threads(threads)
    session = ort_session(onnx_path, threads=threads, spinning=False)
    module = graph.module.eval()
    data_t = [torch.from_numpy(np.ascontiguousarray(a)) for a in graph.data_inputs.values()]
    data_np = {k: np.ascontiguousarray(v) for k, v in graph.data_inputs.items()}

    def run_torch(x: np.ndarray) -> None:
        with torch.inference_mode():
            module(torch.from_numpy(x), *data_t)

    def run_ort(x: np.ndarray) -> None:
        session.run(None, {"frames": x, **data_np})

    out: dict[str, Any] = {}
    for b in batches:
        x = np.ascontiguousarray(np.resize(frames, (b, *frames.shape[1:])))
        for _ in range(3):  # warm-up: allocator, thread pools, first-call graph setup
            run_torch(x)
            run_ort(x)
        times: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
        for i in range(repeats):
            order = [("torch", run_torch), ("onnxruntime", run_ort)]
            for name, fn in order if i % 2 == 0 else order[::-1]:
                t0 = time.perf_counter()
                fn(x)
                times[name].append(time.perf_counter() - t0)
        t, o = _stats(times["torch"], b), _stats(times["onnxruntime"], b)
        out[f"batch_{b}"] = {
            "torch": t,
            "onnxruntime": o,
            "torch_over_onnxruntime_median": t["median_ms_per_frame"] / o["median_ms_per_frame"],
            "torch_over_onnxruntime_p99": t["p99_ms_per_frame"] / o["p99_ms_per_frame"],
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--method", default="patchcore", help="patchcore | padim | toy (ignored with --run)")
    p.add_argument("--run", type=Path, help="an existing trainer run directory")
    p.add_argument("--image-size", type=int, default=256, help="model resolution when fitting here")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "export_latency.json")
    args = p.parse_args(argv)
    batches = [int(b) for b in args.batches.split(",")]

    from linewatch.export.bundle_writer import write_bundle
    from linewatch.export.run_source import load_run_for_export
    from linewatch.export.toy import toy_frames, toy_scoring_graph, write_toy_bundle

    result: dict[str, Any] = {
        "benchmark": "export_latency",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "threads": args.threads,
        "repeats": args.repeats,
    }
    with tempfile.TemporaryDirectory(prefix="lw-bench-") as tmp:
        work = Path(tmp)
        fit_s = None
        if args.run is None and args.method == "toy":
            graph = toy_scoring_graph(input_hw=(args.image_size, args.image_size))
            frames = toy_frames(8, graph.input_hw, seed=1)
            written = write_toy_bundle(work / "bundle", graph=graph, max_batch=max(batches))
            method = "toy"
        else:
            run_dir = args.run
            if run_dir is None:
                run_dir, _, fit_s = _fit_run(args.method, work, args.image_size, ["brick", "gravel"])
            run = load_run_for_export(run_dir)
            graph, frames, method = run.graph, run.golden_inputs, run.info.method
            written = write_bundle(
                graph,
                work / "bundle",
                info=run.info,
                golden_inputs=run.golden_inputs,
                max_batch=max(batches),
            )
        result.update(
            {
                "method": method,
                "input_hw": list(graph.input_hw),
                "fit_seconds": fit_s,
                "export_seconds": round(written.seconds, 2),
                "onnx_export_seconds": round(written.onnx.seconds, 2) if written.onnx else None,
                "bundle_bytes": written.size_bytes,
                "bundle_files": {
                    f: (written.path / f).stat().st_size for f in sorted(written.manifest["files"])
                },
                "largest_intermediate": written.manifest["export"]["static_checks"]["largest_intermediate"],
                "golden_parity": written.parity.as_dict(),
            }
        )
        result["latency"] = measure(
            graph, written.path / "model.onnx", frames, batches, args.repeats, args.threads
        )
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("method", "input_hw", "export_seconds", "bundle_bytes")}))
    for key, row in result["latency"].items():
        t, o = row["torch"], row["onnxruntime"]
        print(
            f"{key}: torch {t['median_ms_per_frame']:.2f} ms/frame (p99 {t['p99_ms_per_frame']:.2f}), "
            f"onnxruntime {o['median_ms_per_frame']:.2f} ms/frame (p99 {o['p99_ms_per_frame']:.2f}), "
            f"ratio {row['torch_over_onnxruntime_median']:.2f}x"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
