"""CPU latency per frame of each method's whole scoring graph in onnxruntime: batch 1, 256x256.

EfficientAD-S, EfficientAD-M, STFPM, Reverse Distillation, CFA and PatchCore are exported by the same exporter
(`export.onnx_export.export_onnx`) and timed in ONE process, interleaved call by call
in a rotating order, so load drift on a shared machine hits every method alike. Per
method: median and p99 latency per frame, and both as a ratio to PatchCore.

What is being timed, and why it is fair:
- EfficientAD, STFPM and Reverse Distillation run untrained networks: latency depends on shapes, not on
  weight values, and training them at 256 px on a CPU would take hours. Published
  sizes (PDN width 1.0, 384 channels; STFPM on the default backbone's three levels).
- PatchCore is fitted on one small generated task so its bank has the deployed shape:
  the bank is padded to the memory budget (30,000 patches by default), as in a bundle.
- CFA's bank grows by h*w centres (1,024 at 256 px) per task: it is timed with 10 tasks' worth
  (`--cfa-tasks`), the benchmark protocol's length.
- Every graph includes the uint8 input conversion, map upsampling, smoothing and the
  score normalisation, exactly as the edge runs it.

    python benchmarks/method_latency.py [--repeats 60] [--threads 2] [--out FILE]

Writes JSON to benchmarks/results/method_latency.json unless --out is given.
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

HW = (256, 256)


def _patchcore(data: Path, budget: int, threads: int) -> Any:
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.methods.registry import build_method

    split = load_task(f"mvtec:{data}", "brick")
    train = read_images([s.path for s in split.train], HW)
    method = build_method("patchcore", "cl", image_size=HW, budget=budget, progress=False)
    method.fit_task("brick", train[4:])
    method.calibrate({"brick": train[:4]})
    return method


def _cfa(data: Path, tasks: int) -> Any:
    """CFA after `tasks` tasks: its bank holds h*w centres per task (one task's, repeated: latency
    depends on the bank's shape, not its values); the descriptor is trained for one step."""
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.methods.registry import build_method

    split = load_task(f"mvtec:{data}", "brick")
    train = read_images([s.path for s in split.train], HW)
    method = build_method("cfa", "replay", image_size=HW, steps=1, progress=False)
    method.fit_task("brick", train[4:])
    method.banks = method.banks * tasks
    method.calibrate({"brick": train[:4]})
    return method


def build_methods(data: Path, budget: int, threads: int, cfa_tasks: int = 10) -> dict[str, Any]:
    """Method name -> a method object whose `scoring_graph()` is what a bundle would hold."""
    from linewatch.trainer.methods.registry import build_method

    return {
        "efficientad-s": build_method("efficientad", "replay", image_size=HW, size="s", progress=False),
        "efficientad-m": build_method("efficientad", "replay", image_size=HW, size="m", progress=False),
        "stfpm": build_method("stfpm", "replay", image_size=HW, progress=False),
        "reverse_distillation": build_method("reverse_distillation", "replay", image_size=HW, progress=False),
        "cfa": _cfa(data, cfa_tasks),
        "patchcore": _patchcore(data, budget, threads),
    }


def _params(graph: Any) -> int:
    return int(sum(p.numel() for p in graph.module.parameters()))


def _gflops(graph: Any, frame: np.ndarray) -> float:
    """Floating-point operations of one forward (convolutions and matmuls, as torch counts them)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    data = [torch.from_numpy(np.ascontiguousarray(a)) for a in graph.data_inputs.values()]
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        graph.module(torch.from_numpy(np.ascontiguousarray(frame)), *data)
    return counter.get_total_flops() / 1e9


def measure(sessions: dict[str, Any], feeds: dict[str, dict], repeats: int) -> dict[str, list[float]]:
    """Interleaved timings: each round runs every method once, in an order that rotates per round."""
    names = list(sessions)
    for _ in range(5):  # warm-up: allocator, thread pool, first-run graph setup
        for n in names:
            sessions[n].run(None, feeds[n])
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        order = names[i % len(names) :] + names[: i % len(names)]
        for n in order:
            t0 = time.perf_counter()
            sessions[n].run(None, feeds[n])
            times[n].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]], reference: str = "patchcore") -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for n, t in times.items():
        ms = np.asarray(t) * 1e3
        out[n] = {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms)}
    ref = out.get(reference)
    for row in out.values():
        if ref:
            row["median_vs_patchcore"] = row["median_ms"] / ref["median_ms"]
            row["p99_vs_patchcore"] = row["p99_ms"] / ref["p99_ms"]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=60, help="timed calls per method")
    p.add_argument(
        "--threads", type=int, default=min(2, os.cpu_count() or 1), help="onnxruntime/torch threads"
    )
    p.add_argument("--budget", type=int, default=30_000, help="PatchCore memory budget (bank rows)")
    p.add_argument("--cfa-tasks", type=int, default=10, help="tasks in CFA's bank (h*w centres each)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "method_latency.json")
    args = p.parse_args(argv)

    import torch

    from linewatch.export.onnx_export import export_onnx
    from linewatch.export.parity import ort_session
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.data.generate import generate_dataset

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "method_latency",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "backend": "onnxruntime CPUExecutionProvider",
        "input_hw": list(HW),
        "batch": 1,
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_at_start": list(os.getloadavg()),
        "methods": {},
    }
    with tempfile.TemporaryDirectory(prefix="lw-method-latency-") as tmp:
        work = Path(tmp)
        generate_dataset(
            work / "data", ["brick"], n_train=12, n_test_good=2, n_test_defect=2, size=HW[0], seed=0
        )
        frames = read_images([s.path for s in load_task(f"mvtec:{work / 'data'}", "brick").test], HW)
        sessions, feeds = {}, {}
        for name, method in build_methods(work / "data", args.budget, args.threads, args.cfa_tasks).items():
            graph = method.scoring_graph()
            t0 = time.perf_counter()
            exported = export_onnx(graph, work / f"{name}.onnx", max_batch=1)
            info = {
                "export_seconds": round(time.perf_counter() - t0, 1),
                "exporter": exported.exporter,
                "onnx_bytes": (work / f"{name}.onnx").stat().st_size,
                "parameters": _params(graph),
                "gflops_per_frame": round(_gflops(graph, frames[:1]), 2),
                "data_inputs": {k: list(v.shape) for k, v in graph.data_inputs.items()},
            }
            result["methods"][name] = info
            sessions[name] = ort_session(work / f"{name}.onnx", threads=args.threads, spinning=False)
            feeds[name] = {"frames": np.ascontiguousarray(frames[:1]), **graph.data_inputs}
            print(
                f"exported {name}: {info['parameters']:,} parameters, {info['gflops_per_frame']} GFLOP/frame, "
                f"{info['onnx_bytes'] / 1e6:.1f} MB"
            )
        times = measure(sessions, feeds, args.repeats)
    stats = summarise(times)
    for name, row in stats.items():
        result["methods"][name]["latency"] = row
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{'method':<15}{'GFLOP':>8}{'median ms':>11}{'p99 ms':>10}{'median/PC':>11}{'p99/PC':>9}")
    for name, row in sorted(stats.items(), key=lambda kv: kv[1]["median_ms"]):
        print(
            f"{name:<15}{result['methods'][name]['gflops_per_frame']:>8.1f}{row['median_ms']:>11.2f}"
            f"{row['p99_ms']:>10.2f}{row['median_vs_patchcore']:>11.2f}{row['p99_vs_patchcore']:>9.2f}"
        )
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
