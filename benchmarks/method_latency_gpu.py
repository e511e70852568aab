"""GPU latency per frame of each method's scoring graph (torch on CUDA): batch 1 and 8, 256x256.

The companion of `method_latency.py` (onnxruntime on CPU). It answers the question the
CPU table cannot: on the GPU box beside the line, which method is fastest? Convolution
-only networks (EfficientAD's PDN) are cheap on a GPU even at 76 GFLOP per frame, while
PatchCore's nearest-neighbour search over a 30,000-row bank is memory-bound everywhere.

The same scoring graphs the exporter turns into ONNX are timed, in one process,
interleaved call by call in a rotating order. Each variant:
- `fp32`: eager torch, TF32 off, so it is the graph's own arithmetic;
- `fp16`: eager torch under autocast (what a TensorRT FP16 engine approximates);
- `fp16-graph`: the fp16 call captured in a CUDA graph, which removes Python and
  kernel-launch overhead the way a TensorRT engine does. Skipped with a reason when
  capture fails.
A timed call is what the edge pays per batch: copy the uint8 frames to the GPU, run the
graph, copy map, score and task back, synchronise.

TensorRT itself is not timed here: its libraries come only from NVIDIA's package index,
which this project's build machines cannot reach. Numbers are for torch, an upper bound
on what an engine costs.

    python benchmarks/method_latency_gpu.py [--repeats 200] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.method_latency import HW, _gflops, build_methods, summarise  # noqa: E402

VARIANTS = ("fp32", "fp16", "fp16-graph")


def _caller(graph: Any, batch: int, variant: str) -> Callable[[np.ndarray], Any]:
    """A function frames(uint8, host) -> host outputs, running `graph` on the GPU as `variant`."""
    import torch

    dev = torch.device("cuda")
    module = graph.module.to(dev).eval()
    data = [torch.from_numpy(np.ascontiguousarray(a)).to(dev) for a in graph.data_inputs.values()]
    pinned = torch.empty((batch, *HW, 3), dtype=torch.uint8).pin_memory()
    frames_dev = torch.empty((batch, *HW, 3), dtype=torch.uint8, device=dev)
    fp16 = variant.startswith("fp16")

    def forward() -> tuple[Any, ...]:
        with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=fp16):
            return tuple(module(frames_dev, *data))

    if variant == "fp16-graph":
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(3):
                forward()
        torch.cuda.current_stream().wait_stream(stream)
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            static_out = forward()

        def run_graph() -> tuple[Any, ...]:
            cuda_graph.replay()
            return static_out

        run = run_graph
    else:
        run = forward

    def call(frames: np.ndarray) -> Any:
        pinned.numpy()[:] = frames
        frames_dev.copy_(pinned, non_blocking=True)
        outs = run()
        host = [o.float().cpu() for o in outs]  # .cpu() synchronises
        return host

    return call


def _print_table(batch: str, stats: dict[str, dict[str, float]]) -> None:
    print(f"\n{batch}: {'method/variant':<26}{'median ms':>10}{'p99 ms':>9}{'/frame':>8}{'vs PC fp32':>11}")
    for n, row in sorted(stats.items(), key=lambda kv: kv[1]["median_ms"]):
        print(
            f"{'':8}{n:<26}{row['median_ms']:>10.3f}{row['p99_ms']:>9.3f}"
            f"{row['per_frame_median_ms']:>8.3f}{row.get('median_vs_patchcore', float('nan')):>11.2f}"
        )


def merge(paths: list[Path], out: Path) -> int:
    """Join results of one process per method (see the README of benchmarks) and redo the ratios.

    Running each method in its own process is the fallback when CUDA graphs of several
    methods in one process misbehave; ratios then compare processes run back to back.
    """
    runs = [json.loads(p.read_text()) for p in paths]
    merged = {**runs[0], "methods": {}, "skipped": {}, "latency": {}, "merged_from": [str(p) for p in paths]}
    for run in runs:
        merged["methods"].update(run["methods"])
        merged["skipped"].update(run["skipped"])
        for batch, stats in run["latency"].items():
            merged["latency"].setdefault(batch, {}).update(stats)
    for batch, stats in merged["latency"].items():
        ref = stats.get("patchcore/fp32")
        for row in stats.values():
            row.pop("median_vs_patchcore", None)
            row.pop("p99_vs_patchcore", None)
            if ref:
                row["median_vs_patchcore"] = row["median_ms"] / ref["median_ms"]
                row["p99_vs_patchcore"] = row["p99_ms"] / ref["p99_ms"]
        _print_table(batch, stats)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(merged, indent=2) + "\n")
    print(f"written to {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=200, help="timed calls per method and variant")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    p.add_argument("--budget", type=int, default=30_000, help="PatchCore memory budget (bank rows)")
    p.add_argument("--methods", nargs="+", default=None, help="subset of the methods (default: all four)")
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    p.add_argument(
        "--skip", nargs="*", default=[], help="method/variant pairs not to run, with no reason needed"
    )
    p.add_argument(
        "--merge", type=Path, nargs="+", default=None, help="merge per-method result files instead"
    )
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "method_latency_gpu.json")
    args = p.parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out)

    import torch

    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.data.generate import generate_dataset

    if not torch.cuda.is_available():
        print("no CUDA GPU visible: this benchmark needs one (see method_latency.py for CPU)")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    result: dict[str, Any] = {
        "benchmark": "method_latency_gpu",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"platform": platform.platform(), "gpu": torch.cuda.get_device_name(0)},
        "torch": torch.__version__,
        "input_hw": list(HW),
        "repeats": args.repeats,
        "methods": {},
        "skipped": {},
        "latency": {},
    }
    with tempfile.TemporaryDirectory(prefix="lw-method-latency-gpu-") as tmp:
        work = Path(tmp)
        generate_dataset(
            work / "data", ["brick"], n_train=12, n_test_good=2, n_test_defect=2, size=HW[0], seed=0
        )
        frames = read_images([s.path for s in load_task(f"mvtec:{work / 'data'}", "brick").test], HW)
        methods = build_methods(work / "data", args.budget, threads=4)
        graphs = {name: m.scoring_graph() for name, m in methods.items() if name in (args.methods or methods)}
        for name, graph in graphs.items():
            result["methods"][name] = {"gflops_per_frame": round(_gflops(graph, frames[:1]), 2)}
        for batch in args.batches:
            batch_frames = np.ascontiguousarray(np.resize(frames, (batch, *frames.shape[1:])))
            calls: dict[str, Callable[[np.ndarray], Any]] = {}
            for name, graph in graphs.items():
                for variant in args.variants:
                    key = f"{name}/{variant}"
                    if key in args.skip:
                        result["skipped"][f"b{batch}/{key}"] = "--skip"
                        continue
                    try:
                        calls[key] = _caller(graph, batch, variant)
                        calls[key](batch_frames)
                    except Exception as exc:  # capture can fail on data-dependent ops
                        calls.pop(key, None)
                        result["skipped"][f"b{batch}/{key}"] = f"{type(exc).__name__}: {exc}"[:300]
            names = list(calls)
            for _ in range(10):
                for n in names:
                    calls[n](batch_frames)
            times: dict[str, list[float]] = {n: [] for n in names}
            for i in range(args.repeats):
                order = names[i % len(names) :] + names[: i % len(names)]
                for n in order:
                    t0 = time.perf_counter()
                    calls[n](batch_frames)
                    times[n].append(time.perf_counter() - t0)
            stats = summarise(times, reference="patchcore/fp32")
            for row in stats.values():
                row["per_frame_median_ms"] = row["median_ms"] / batch
            result["latency"][f"batch{batch}"] = stats
            print(
                f"\nbatch {batch}: {'method/variant':<26}{'median ms':>10}{'p99 ms':>9}{'/frame':>8}{'vs PC fp32':>11}"
            )
            for n, row in sorted(stats.items(), key=lambda kv: kv[1]["median_ms"]):
                print(
                    f"{'':9}{n:<26}{row['median_ms']:>10.3f}{row['p99_ms']:>9.3f}"
                    f"{row['per_frame_median_ms']:>8.3f}{row.get('median_vs_patchcore', float('nan')):>11.2f}"
                )
    for k, v in result["skipped"].items():
        print(f"skipped {k}: {v}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
