"""Continual learning of the trained methods at full resolution: replay against naive, side by side.

The tests prove `replay` beats `naive` at 64 px with short schedules, which a CPU runs in
minutes. This script runs the same protocol at 256 px with real schedules, which wants a
GPU: generated brick, moon and cell (the one generator, MVTec layout), then for each
method both strategies through `trainer.continual.fit`, exactly what `linewatch-train fit`
runs. Training runs on `--device`; scoring runs on the CPU copy, as always.

Writes JSON with, per method and strategy: final image/pixel AUROC, AU-PRO, forgetting,
the seconds each task took to train, the teacher's distillation time (EfficientAD) and
the replay buffer's cost.

    python benchmarks/trained_methods_cl.py --device cuda [--methods efficientad stfpm cfa reverse_distillation]

``--devset ../shared/devset`` runs the real dev set instead (issue 18's table): ball_screw ->
commutator -> impeller, each from its own root (``fit`` then ``update``, as a user runs them), every
method in ``--methods`` (all eight by default there) under its continual strategy and ``naive``, at
``--size`` px with ``--geometry`` (``resize`` by default: the trained methods' CPU budget; the
PatchCore default ``auto`` is measured by ``real_images.py``), on a seeded subset
(``--max-train``, ``--max-test``), plus the edge's ms per frame (the exported bundle in onnxruntime).

    python benchmarks/trained_methods_cl.py --devset ../shared/devset --device cpu --size 128 \
        --max-train 24 --max-test 10 --steps 150
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

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = ["brick", "moon", "cell"]
ALL_METHODS = [
    "patchcore",
    "padim",
    "cfa",
    "efficientad",
    "stfpm",
    "draem",
    "fastflow",
    "reverse_distillation",
]
KEYS = ("image_auroc", "pixel_auroc", "aupro", "pixel_aupr")


def _summary(metrics: dict[str, Any]) -> dict[str, Any]:
    train = metrics["method_metadata"]["main"].get("training", [])
    return {
        "final": {k: metrics["final"][k] for k in KEYS if k in metrics["final"]},
        "forgetting": {k: metrics["forgetting"][k] for k in KEYS if k in metrics["forgetting"]},
        "matrix_image_auroc": metrics["matrix"]["image_auroc"],
        "fit_seconds_per_task": [round(t["fit_s"], 1) for t in metrics["timings"]],
        "train_seconds_per_task": [t["seconds"] for t in train],
        "steps_per_task": [t["steps"] for t in train],
        "stopped_early": [t["stopped_early"] for t in train],
        "replay_buffer": metrics.get("replay_buffer"),
        "teacher": metrics["method_metadata"]["main"].get("teacher"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument(
        "--methods",
        nargs="+",
        default=None,
        choices=ALL_METHODS,
        help="default: efficientad stfpm (generated data), all eight (--devset)",
    )
    p.add_argument("--strategies", nargs="+", default=None, help="default: each method's first, and naive")
    p.add_argument("--devset", type=Path, help="the real dev set root (../shared/devset): issue 18's table")
    p.add_argument("--geometry", default="resize", help="--devset: the geometry mode")
    p.add_argument("--max-train", type=int, default=24, help="--devset: train images per task")
    p.add_argument("--max-test", type=int, default=10, help="--devset: test images per test folder")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument(
        "--steps", type=int, default=3000, help="training steps per task (early stopping may end sooner)"
    )
    p.add_argument("--distill-steps", type=int, default=4000)
    p.add_argument("--replay-size", type=int, default=300)
    p.add_argument("--work", type=Path, default=None, help="keep data and runs here (default: a temp folder)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "trained_methods_cl.json")
    args = p.parse_args(argv)
    if args.devset is not None:
        return devset_table(args)
    args.methods = args.methods or ["efficientad", "stfpm"]

    import torch

    from linewatch.trainer import continual
    from linewatch.trainer.config import config_from_values
    from linewatch.trainer.data.generate import generate_dataset

    result: dict[str, Any] = {
        "benchmark": "trained_methods_cl",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        },
        "torch": torch.__version__,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tasks": TASKS,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="lw-trained-cl-") as tmp:
        work = args.work or Path(tmp)
        data = work / "data"
        t0 = time.perf_counter()
        generate_dataset(
            data, TASKS, n_train=args.n_train, n_test_good=10, n_test_defect=12, size=args.size, seed=0
        )
        result["generate_seconds"] = round(time.perf_counter() - t0, 1)
        for method in args.methods:
            for strategy in args.strategies or ["replay", "naive"]:
                section = {"device": args.device, "steps": args.steps, "replay": {"size": args.replay_size}}
                if method == "efficientad":
                    section |= {"distill_steps": args.distill_steps, "teacher_cache": str(work / "teachers")}
                cfg = config_from_values(
                    {
                        "method": method,
                        "strategy": strategy,
                        "image_size": (args.size, args.size),
                        "progress": False,
                        "report": False,
                        method: section,
                    }
                )
                t0 = time.perf_counter()
                metrics = continual.fit(cfg, f"mvtec:{data}", TASKS, work / f"run-{method}-{strategy}")
                row = _summary(metrics)
                row["wall_seconds"] = round(time.perf_counter() - t0, 1)
                result["runs"][f"{method}/{strategy}"] = row
                print(
                    f"{method}/{strategy}: final image AUROC {row['final']['image_auroc']:.3f}, "
                    f"forgetting {row['forgetting']['image_auroc']:.3f}, "
                    f"train s/task {row['train_seconds_per_task']}, wall {row['wall_seconds']} s",
                    flush=True,
                )
                args.out.parent.mkdir(parents=True, exist_ok=True)
                args.out.write_text(
                    json.dumps(result, indent=2) + "\n"
                )  # after every run: partial results survive
    print(f"written to {args.out}")
    return 0


def _section(method: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """The method's own settings for this run: the training budget for trained methods only."""
    from linewatch.trainer.methods.registry import method_class

    fields = method_class(method).Config.model_fields
    section: dict[str, Any] = {}
    if "steps" in fields:
        section |= {"device": args.device, "steps": args.steps, "replay": {"size": args.replay_size}}
    if method == "efficientad":
        section |= {"distill_steps": args.distill_steps, "teacher_cache": str(work / "teachers")}
    return section


def devset_table(args: argparse.Namespace) -> int:
    """Every method, continual and naive, over the three dev tasks; edge ms per frame of each bundle."""
    from benchmarks.real_images import SEQUENCE as DEV_SEQUENCE
    from benchmarks.real_images import edge_cost
    from linewatch.trainer import continual
    from linewatch.trainer.config import config_from_values
    from linewatch.trainer.data.subset import link_subset
    from linewatch.trainer.methods.registry import method_class

    work = args.work or Path(tempfile.mkdtemp(prefix="lw-trained-dev-"))
    data = work / "devset-subset"
    for root, task in DEV_SEQUENCE:
        if not (data / root / task).exists():
            link_subset(
                args.devset / root / task, data / root / task, args.max_train, args.max_test, args.max_test
            )
    result: dict[str, Any] = {
        "benchmark": "trained_methods_cl --devset",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "tasks": [t for _, t in DEV_SEQUENCE],
        "runs": {},
    }
    for method in args.methods or ALL_METHODS:
        first = method_class(method).strategies[0]
        for strategy in args.strategies or [first, "naive"]:
            cfg = config_from_values(
                {
                    "method": method,
                    "strategy": strategy,
                    "image_size": (args.size, args.size),
                    "geometry": {"mode": args.geometry},
                    "progress": False,
                    "report": False,
                    method: _section(method, args, work),
                }
            )
            run = work / f"run-{method}-{strategy}"
            t0 = time.perf_counter()
            for i, (root, task) in enumerate(DEV_SEQUENCE):
                if i == 0:
                    metrics = continual.fit(cfg, f"mvtec:{data / root}", [task], run, log=lambda _: None)
                else:
                    metrics = continual.update(run, f"mvtec:{data / root}", [task], log=lambda _: None)
            row = {**_summary(metrics), "wall_seconds": round(time.perf_counter() - t0, 1)}
            last = metrics["matrix"]
            row["final_by_task"] = {
                k: dict(zip(metrics["tasks"], last[k][-1], strict=True)) for k in KEYS if k in last
            }
            edge = edge_cost(data, run, work, frames_per_task=6, threads=2)
            row["edge_ms_median"] = {t: edge[t]["ms_chosen"]["median"] for _, t in DEV_SEQUENCE}
            result["runs"][f"{method}/{strategy}"] = row
            print(
                f"{method}/{strategy}: final image AUROC {row['final']['image_auroc']:.3f}, forgetting "
                f"{row['forgetting']['image_auroc']:.3f}, wall {row['wall_seconds']} s, "
                f"edge ms {row['edge_ms_median']}",
                flush=True,
            )
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=2) + "\n")  # partial results survive
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
