"""PatchCore's whole graph against its limit: dense kNN (old) vs chunked kNN (new) vs an sgemm probe.

Why: the one operation PatchCore cannot avoid is the (B*P x D) x (D x bank) distance GEMM. The
probe times exactly that GEMM as one numpy sgemm with the same thread count, so `ratio_to_probe`
says how far the whole graph (backbone, kNN, map head) is from what this CPU can do. Both graphs
come from the same fitted model and the same exporter; `old` swaps in the dense form
(`knn.dense_nearest_per_task`) for the chunked one. Everything runs in one process, interleaved
call by call in a rotating order, so load drift on a shared machine hits all three alike.

Per bank size (total patches over T tasks, padded as in a bundle): median and p99 ms per call at
each batch, the ratios old/probe and new/probe, and the exactness of new vs old on real frames
(max |score| and |map| difference, task agreement).

    python benchmarks/knn_scaling.py [--banks 3000,10000,30000,100000] [--batches 1,8]
        [--tasks 3] [--repeats 15] [--threads 2] [--out FILE]

Old graphs whose distance matrix would exceed `--max-dense-gib` are skipped and say so.
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


def _method(data: Path, budget: int, tasks: int) -> Any:
    """PatchCore fitted on one generated task, its coreset repeated as `tasks` tasks: latency
    depends on the bank's shape (T, budget // T, D), not on its values."""
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.methods.registry import build_method

    split = load_task(f"mvtec:{data}", "brick")
    train = read_images([s.path for s in split.train], HW)
    method = build_method("patchcore", "cl", image_size=HW, budget=budget, progress=False)
    method.fit_task("brick", train[4:])
    method.calibrate({"brick": train[:4]})
    method.tasks = [f"brick{i}" for i in range(tasks)]
    method.coresets = [method.coresets[0] + 0.01 * i for i in range(tasks)]
    method.center, method.scale = method.center * tasks, method.scale * tasks
    method._bank_cache = None
    return method, read_images([s.path for s in split.test], HW)


def _export(graph: Any, path: Path, max_batch: int, dense: bool) -> None:
    from linewatch.export.onnx_export import export_onnx
    from linewatch.trainer.methods.patchcore import knn, model

    if dense:
        model.nearest_per_task = knn.dense_nearest_per_task
    try:
        export_onnx(graph, path, max_batch=max_batch)
    finally:
        model.nearest_per_task = knn.nearest_per_task


def sgemm_probe(rows: int, d: int, bank: np.ndarray | int, threads: int) -> Any:
    """The limit: one (rows x d) @ (d x N) sgemm, output preallocated (no page faults), `threads` BLAS
    threads. `bank` is the (T, M, D) bank or its row count N."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    q = rng.standard_normal((rows, d), dtype=np.float32)
    if isinstance(bank, np.ndarray):
        bt = np.ascontiguousarray(bank.reshape(-1, d).T)
    else:
        bt = rng.standard_normal((d, bank), dtype=np.float32)
    out = np.empty((rows, bt.shape[1]), np.float32)

    def probe() -> None:
        with threadpool_limits(limits=threads):
            np.matmul(q, bt, out=out)

    return probe


def _stats(seconds: list[float]) -> dict[str, float]:
    ms = np.asarray(seconds) * 1e3
    return {"median_ms": float(np.median(ms)), "p99_ms": float(np.percentile(ms, 99)), "calls": len(ms)}


def bench_bank(
    method: Any,
    frames: np.ndarray,
    work: Path,
    batches: list[int],
    repeats: int,
    threads: int,
    max_gib: float,
) -> dict[str, Any]:
    from linewatch.export.parity import ort_infer, ort_session

    graph = method.scoring_graph()
    bank = graph.data_inputs["bank"]
    t, m, d = bank.shape
    out: dict[str, Any] = {"bank_shape": [t, m, d]}
    paths = {"new": work / "new.onnx", "old": work / "old.onnx"}
    for name, path in paths.items():
        _export(graph, path, max(batches), dense=name == "old")
    sessions = {n: ort_session(p, threads=threads, spinning=False) for n, p in paths.items()}
    ref = ort_infer(sessions["old"], dict(graph.data_inputs), frames, batch_size=4)
    new = ort_infer(sessions["new"], dict(graph.data_inputs), frames, batch_size=4)
    out["new_vs_old"] = {
        "frames": len(frames),
        "max_abs_score_diff": float(np.abs(ref[1] - new[1]).max()),
        "max_abs_map_diff": float(np.abs(ref[0] - new[0]).max()),
        "task_agreement": float((ref[2] == new[2]).mean()),
    }
    for b in batches:
        p = (HW[0] // 8) * (HW[1] // 8)
        x = np.ascontiguousarray(np.resize(frames, (b, *frames.shape[1:])))
        feed = {"frames": x, **graph.data_inputs}
        dense_gib = b * p * t * m * 4 / 2**30
        runs = {n: (lambda s=s, feed=feed: s.run(None, feed)) for n, s in sessions.items()}
        if dense_gib > max_gib:
            del runs["old"]

        runs["sgemm_probe"] = sgemm_probe(b * p, d, bank, threads)
        names = list(runs)
        for n in names:
            runs[n]()
        times: dict[str, list[float]] = {n: [] for n in names}
        for i in range(repeats):
            for n in names[i % len(names) :] + names[: i % len(names)]:
                t0 = time.perf_counter()
                runs[n]()
                times[n].append(time.perf_counter() - t0)
        row: dict[str, Any] = {n: _stats(v) for n, v in times.items()}
        row["dense_matrix_gib"] = round(dense_gib, 3)
        if "old" not in runs:
            row["old"] = f"skipped: the dense matrix is {dense_gib:.1f} GiB (> --max-dense-gib {max_gib})"
        probe_ms = row["sgemm_probe"]["median_ms"]
        for n in ("new", "old"):
            if isinstance(row.get(n), dict):
                row[f"{n}_over_probe_median"] = row[n]["median_ms"] / probe_ms
                row[f"{n}_over_probe_p99"] = row[n]["p99_ms"] / row["sgemm_probe"]["p99_ms"]
        if isinstance(row.get("old"), dict):
            row["old_over_new_median"] = row["old"]["median_ms"] / row["new"]["median_ms"]
        out[f"batch_{b}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--banks", default="3000,10000,30000,100000", help="total bank patches (budget)")
    p.add_argument("--tasks", type=int, default=3)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--max-dense-gib", type=float, default=1.5, help="skip old graphs above this matrix size")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "knn_scaling.json")
    args = p.parse_args(argv)
    import torch

    from linewatch.trainer.data.generate import generate_dataset
    from linewatch.trainer.methods.patchcore.knn import BANK_CHUNK

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    result: dict[str, Any] = {
        "benchmark": "knn_scaling",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "backend": "onnxruntime CPUExecutionProvider",
        "input_hw": list(HW),
        "threads": args.threads,
        "repeats": args.repeats,
        "bank_chunk": BANK_CHUNK,
        "probe": "numpy sgemm (B*P x D) @ (D x T*M) into a preallocated output, same thread count (threadpoolctl)",
        "load_average_at_start": list(os.getloadavg()),
        "banks": {},
    }
    with tempfile.TemporaryDirectory(prefix="lw-knn-") as tmp:
        work = Path(tmp)
        generate_dataset(
            work / "data", ["brick"], n_train=12, n_test_good=2, n_test_defect=2, size=256, seed=0
        )
        for budget in (int(x) for x in args.banks.split(",")):
            method, frames = _method(work / "data", budget, args.tasks)
            row = bench_bank(method, frames, work, batches, args.repeats, args.threads, args.max_dense_gib)
            result["banks"][str(budget)] = row
            for b in batches:
                r = row[f"batch_{b}"]
                old = r["old"]["median_ms"] if isinstance(r["old"], dict) else float("nan")
                print(
                    f"bank {budget:>6} batch {b}: old {old:8.1f} ms  new {r['new']['median_ms']:8.1f} ms  "
                    f"probe {r['sgemm_probe']['median_ms']:8.1f} ms  new/probe {r['new_over_probe_median']:.2f}  "
                    f"old/probe {r.get('old_over_probe_median', float('nan')):.2f}",
                    flush=True,
                )
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
