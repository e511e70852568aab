"""The CPU backends side by side on the same PatchCore bundle: onnxruntime vs OpenVINO, FP32 vs INT8.

Each bundle is written by the real writer (`export.bundle_writer.write_bundle`, INT8 with
`int8_calibration` = training frames) and each backend is admitted by the edge's own
`select_backend` (golden samples, the manifest's tolerances), then timed through its `infer`, the
call the frame path makes. All (bundle, backend) pairs and an sgemm probe of the kNN's GEMM
shape run in one process, interleaved call by call in a rotating order, per batch size.

    python benchmarks/backend_compare.py [--budget 30000] [--tasks 3] [--batches 1,8] [--repeats 15]

PatchCore is fitted on one generated task with its coreset repeated as `--tasks` tasks (latency
depends on the bank's shape, not its values). Writes benchmarks/results/backend_compare.json.
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from knn_scaling import HW, _method, sgemm_probe  # noqa: E402 - the same fitted PatchCore as the bank benchmark


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budget", type=int, default=30_000)
    p.add_argument(
        "--tasks", type=int, default=1, help="tasks (repeated coresets: >1 makes task routing a near-tie)"
    )
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--backends", default="ort-cpu,openvino")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "backend_compare.json")
    args = p.parse_args(argv)
    import torch

    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends import select_backend
    from linewatch.edge.model.bundle import open_bundle
    from linewatch.export.bundle_writer import BundleInfo, write_bundle
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.data.generate import generate_dataset

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    result: dict[str, Any] = {
        "benchmark": "backend_compare",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "input_hw": list(HW),
        "threads": args.threads,
        "repeats": args.repeats,
        "load_average_at_start": list(os.getloadavg()),
        "bundles": {},
        "latency": {},
    }
    backends: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="lw-backends-") as tmp:
        work = Path(tmp)
        generate_dataset(
            work / "data", ["brick"], n_train=16, n_test_good=2, n_test_defect=2, size=256, seed=0
        )
        method, frames = _method(work / "data", args.budget, args.tasks)
        train = read_images([s.path for s in load_task(f"mvtec:{work / 'data'}", "brick").train], HW)
        graph = method.scoring_graph()
        info = BundleInfo(name="patchcore", method="patchcore", tasks=list(method.tasks))
        for precision in ("fp32", "int8"):
            try:
                written = write_bundle(
                    graph,
                    work / f"patchcore-{precision}",
                    info=info,
                    golden_inputs=frames,
                    max_batch=max(batches),
                    int8_calibration=train if precision == "int8" else None,
                )
            except Exception as e:  # the writer refusing INT8 (e.g. tasks re-routed) is a result
                result["bundles"][precision] = f"refused: {e}"
                continue
            bundle = open_bundle(written.path)
            m = written.manifest
            result["bundles"][precision] = {
                "golden_tolerances": {"score": m["golden"]["atol_score"], "map": m["golden"]["atol_map"]},
                "quantization": m.get("quantization"),
                "admission": {},
            }
            for name in args.backends.split(","):
                cfg = BackendConfig(threads=args.threads)
                try:
                    sel = select_backend(bundle, cfg, [name])
                except Exception as e:  # an unavailable backend or failed golden samples is a result
                    result["bundles"][precision]["admission"][name] = f"refused: {e}"
                    continue
                result["bundles"][precision]["admission"][name] = sel.report.as_dict()
                backends[f"{name}/{precision}"] = sel.backend
        d = graph.data_inputs["bank"].shape[-1]
        for b in batches:
            x = np.ascontiguousarray(np.resize(frames, (b, *frames.shape[1:])))
            runs = {n: (lambda be=be, x=x: be.infer(x)) for n, be in backends.items()}
            runs["sgemm_probe"] = sgemm_probe(
                b * (HW[0] // 8) * (HW[1] // 8), d, graph.data_inputs["bank"], args.threads
            )
            names = list(runs)
            for n in names:
                runs[n]()
            times: dict[str, list[float]] = {n: [] for n in names}
            for i in range(args.repeats):
                for n in names[i % len(names) :] + names[: i % len(names)]:
                    t0 = time.perf_counter()
                    runs[n]()
                    times[n].append(time.perf_counter() - t0)
            row = {
                n: {"median_ms": float(np.median(v) * 1e3), "p99_ms": float(np.percentile(v, 99) * 1e3)}
                for n, v in times.items()
            }
            probe_ms, ref = row["sgemm_probe"]["median_ms"], row.get("ort-cpu/fp32", {}).get("median_ms")
            for n in backends:
                row[n]["over_probe_median"] = row[n]["median_ms"] / probe_ms
                if ref:
                    row[n]["over_ort_fp32_median"] = row[n]["median_ms"] / ref
            result["latency"][f"batch_{b}"] = row
            print(
                f"batch {b}: " + ", ".join(f"{n} {r['median_ms']:.1f} ms" for n, r in row.items()), flush=True
            )
        for be in backends.values():
            be.close()
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["bundles"], indent=1))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
