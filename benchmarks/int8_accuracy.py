"""INT8 against FP32 on the real dev set: image AUROC, verdict agreement per test image, latency.

Per dev task, one PatchCore (cl, one task) is fitted on a seeded subsample of its training images
(`--train`; the held-out 15 % calibrates the threshold), exported to ONNX (FP32) and quantised
with `export/quantize.py` (calibration frames: other training images, never test images). Every
test image is scored by each graph in onnxruntime:

- `fp32`: the exported graph (what a bundle holds without --int8);
- `int8`: the backbone's convolutions in INT8 (what --int8 writes);
- `int8_gemm`: also the kNN Gemms in INT8 (the bank distance as an integer GEMM), to show why
  the default leaves them in float.

Reported per task and graph: image AUROC, its difference to FP32, verdict agreement with FP32 on
every test image (score > 0.5 on both or on neither), max |score| difference; and latency at
batch 1 (median, p99), interleaved with an sgemm probe of the kNN's GEMM shape, as ratios.

    python benchmarks/int8_accuracy.py [--devset ../shared/devset] [--train 60] [--repeats 20]

Writes JSON to benchmarks/results/int8_accuracy.json unless --out is given.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from knn_scaling import sgemm_probe  # noqa: E402 - the one probe definition

TASKS = {"bsdata": "ball_screw", "kolektor": "commutator", "casting": "impeller"}


def _fit(spec: str, task: str, n_train: int, n_calib: int, seed: int) -> tuple[Any, np.ndarray, Any]:
    from linewatch.trainer.data import load_task, read_images
    from linewatch.trainer.methods.registry import build_method

    split = load_task(spec, task)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split.train))
    n_val = max(3, round(0.15 * n_train))
    fit_idx, val_idx = order[n_val:n_train], order[:n_val]
    calib_idx = order[n_train : n_train + n_calib]
    if len(calib_idx) < n_calib:  # few training images: calibrate on fitted ones (still training data)
        calib_idx = order[n_val : n_val + n_calib]
    paths = [s.path for s in split.train]
    method = build_method("patchcore", "cl", image_size=HW, progress=False)
    method.fit_task(task, read_images([paths[i] for i in fit_idx], HW))
    method.calibrate({task: read_images([paths[i] for i in val_idx], HW)})
    return method, read_images([paths[i] for i in calib_idx], HW), split


def _scores(session: Any, data: dict[str, np.ndarray], frames: np.ndarray) -> np.ndarray:
    from linewatch.export.parity import ort_infer

    return ort_infer(session, data, frames, batch_size=1)[1]


def _latency(
    sessions: dict[str, Any], data: dict, frame: np.ndarray, gemm: tuple, repeats: int, threads: int
):
    runs = {n: (lambda s=s: s.run(None, {"frames": frame, **data})) for n, s in sessions.items()}
    runs["sgemm_probe"] = sgemm_probe(gemm[0][0], gemm[0][1], gemm[1][1], threads)
    names = list(runs)
    for n in names:
        runs[n]()
    times: dict[str, list[float]] = {n: [] for n in names}
    for i in range(repeats):
        for n in names[i % len(names) :] + names[: i % len(names)]:
            t0 = time.perf_counter()
            runs[n]()
            times[n].append(time.perf_counter() - t0)
    out = {
        n: {"median_ms": float(np.median(v) * 1e3), "p99_ms": float(np.percentile(v, 99) * 1e3)}
        for n, v in times.items()
    }
    for n in sessions:
        out[n]["over_probe_median"] = out[n]["median_ms"] / out["sgemm_probe"]["median_ms"]
        out[n]["over_fp32_median"] = out[n]["median_ms"] / out["fp32"]["median_ms"]
    return out


def bench_task(devset: Path, name: str, task: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from linewatch.export.onnx_export import export_onnx
    from linewatch.export.parity import ort_session
    from linewatch.export.quantize import quantize_int8
    from linewatch.trainer.data import read_images

    t0 = time.perf_counter()
    method, calib, split = _fit(f"mvtec:{devset / name}", task, args.train, args.calib, args.seed)
    fit_s = time.perf_counter() - t0
    graph = method.scoring_graph()
    data = {k: np.ascontiguousarray(v) for k, v in graph.data_inputs.items()}
    paths = {"fp32": work / f"{name}.onnx"}
    export_onnx(graph, paths["fp32"], max_batch=1)
    for variant, ops in (("int8", ("Conv",)), ("int8_gemm", ("Conv", "Gemm"))):
        paths[variant] = work / f"{name}.{variant}.onnx"
        quantize_int8(paths["fp32"], paths[variant], data, calib, ops)
    sessions = {n: ort_session(p, threads=args.threads, spinning=False) for n, p in paths.items()}
    test = split.test
    labels = np.array([s.label for s in test])
    frames = read_images([s.path for s in test], HW)
    scores = {n: _scores(s, data, frames) for n, s in sessions.items()}
    row: dict[str, Any] = {
        "task": f"{name}/{task}",
        "train_images_used": int(args.train),
        "train_images_available": len(split.train),
        "calibration_frames": len(calib),
        "test_images": len(test),
        "test_defect": int(labels.sum()),
        "bank_shape": list(graph.data_inputs["bank"].shape),
        "fit_seconds": round(fit_s, 1),
    }
    ref = scores["fp32"]
    for n, sc in scores.items():
        row[n] = {
            "image_auroc": float(roc_auc_score(labels, sc)),
            "anomalous_verdicts": int((sc > 0.5).sum()),
            "verdict_agreement_with_fp32": float(((sc > 0.5) == (ref > 0.5)).mean()),
            "verdict_disagreements": int(((sc > 0.5) != (ref > 0.5)).sum()),
            "max_abs_score_diff_to_fp32": float(np.abs(sc - ref).max()),
        }
        row[n]["auroc_minus_fp32"] = row[n]["image_auroc"] - row["fp32"]["image_auroc"]
    t, m, d = graph.data_inputs["bank"].shape
    p = (HW[0] // 8) * (HW[1] // 8)
    row["latency_batch_1"] = _latency(
        sessions, data, np.ascontiguousarray(frames[:1]), ((p, d), (d, t * m)), args.repeats, args.threads
    )
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"dev sets to run, of {list(TASKS)}")
    p.add_argument("--train", type=int, default=60, help="training images per task (seeded subsample)")
    p.add_argument("--calib", type=int, default=32, help="INT8 calibration frames per task")
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "int8_accuracy.json")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    result: dict[str, Any] = {
        "benchmark": "int8_accuracy",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "backend": "onnxruntime CPUExecutionProvider",
        "input_hw": list(HW),
        "threads": args.threads,
        "args": {k: str(v) for k, v in vars(args).items()},
        "load_average_at_start": list(os.getloadavg()),
        "tasks": {},
    }
    with tempfile.TemporaryDirectory(prefix="lw-int8-") as tmp:
        for name in args.tasks.split(","):
            row = bench_task(args.devset, name, TASKS[name], args, Path(tmp))
            result["tasks"][name] = row
            lat = row["latency_batch_1"]
            print(
                f"{row['task']}: AUROC fp32 {row['fp32']['image_auroc']:.4f} int8 {row['int8']['image_auroc']:.4f} "
                f"int8_gemm {row['int8_gemm']['image_auroc']:.4f}; verdict agreement int8 "
                f"{row['int8']['verdict_agreement_with_fp32']:.3f} int8_gemm "
                f"{row['int8_gemm']['verdict_agreement_with_fp32']:.3f}; ms fp32 {lat['fp32']['median_ms']:.1f} "
                f"int8 {lat['int8']['median_ms']:.1f} int8_gemm {lat['int8_gemm']['median_ms']:.1f} "
                f"probe {lat['sgemm_probe']['median_ms']:.1f}",
                flush=True,
            )
    result["load_average_at_end"] = list(os.getloadavg())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
