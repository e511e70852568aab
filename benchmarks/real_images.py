"""Real defects on real parts: the project's own CLI defaults on the dev set, beside anomalib 2.7.

The dev set (``../shared/devset``, see its README) holds three real inspection sets in the MVTec
layout, each its own root: ``bsdata/ball_screw`` (pitting, 1130x460), ``kolektor/commutator``
(hairline cracks, about 500x1260), ``casting/impeller`` (300x300, image labels only).

What runs, all in this one process tree so the figures sit side by side:

1. **continual**: one model over ball_screw -> commutator -> impeller through ``linewatch-train fit``
   then ``update`` with no flags beyond ``--data`` and ``--tasks`` (variants add one flag each:
   ``--geometry resize`` shows what squeezing costs, ``--backbone`` the Lite1/Lite2 trade-off);
2. **alone**: each task fitted alone with the same defaults;
3. **edge**: the continual run exported by ``linewatch-export`` and scored by the edge's own
   scorer (``edge/inference/frame_scorer.py``, onnxruntime CPU) on native-resolution test frames: ms per frame at
   the chosen geometry beside the same graph at a 256-px resize (the price of accuracy), bundle MB;
4. **anomalib**: PatchCore and PaDiM, one model per task, in their own venv
   (``benchmarks/anomalib_peer``), with our Lite0 weights and with anomalib's defaults; their raw
   scores and maps go through OUR metric code (``trainer/metrics.py``), maps resized to the masks.

Writes ``real_images.json`` and ``real_images.md`` under ``--out`` (default benchmarks/results).
An hour or more on 2 CPU cores with every part; ``--parts`` picks some.

    python benchmarks/real_images.py                                  # everything
    python benchmarks/real_images.py --parts continual,edge --variants default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

SEQUENCE = [("bsdata", "ball_screw"), ("kolektor", "commutator"), ("casting", "impeller")]
VARIANTS: dict[str, list[str]] = {
    "default": [],
    "resize": ["--geometry", "resize"],
    "lite1": ["--backbone", "tf_efficientnet_lite1"],
    "lite2": ["--backbone", "tf_efficientnet_lite2"],
}
METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_f1_calibrated")


def _train(*args: str) -> float:
    """One trainer CLI call (its own process, as a user runs it); wall seconds."""
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "linewatch.trainer.cli", *args]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - t0


def _summary(run: Path, wall_s: list[float]) -> dict[str, Any]:
    m = json.loads((run / "metrics.json").read_text())
    last = {k: dict(zip(m["tasks"], m["matrix"][k][-1], strict=False)) for k in METRICS}
    return {
        "tasks": m["tasks"],
        "final_by_task": last,
        "final": {k: m["final"].get(k) for k in METRICS},
        "forgetting": {k: m.get("forgetting", {}).get(k) for k in METRICS},
        "geometry": m.get("geometry"),
        "backbone": m["backbone"],
        "timings": m.get("timings"),
        "peak_rss_mb": max(t["peak_rss_mb"] for t in m.get("timings", [{"peak_rss_mb": 0}])),
        "wall_s": [round(w, 1) for w in wall_s],
    }


def continual(devset: Path, work: Path, variant: str) -> dict[str, Any]:
    run = work / f"continual-{variant}"
    extra = VARIANTS[variant]
    walls = []
    for i, (root, task) in enumerate(SEQUENCE):
        data = f"mvtec:{devset / root}"
        common = ["--data", data, "--tasks", task]
        if i == 0:
            walls.append(_train("fit", *common, "--out", str(run), "--no-progress", "--no-report", *extra))
        else:
            walls.append(_train("update", "--run", str(run), *common))
        print(f"  [{variant}] {task} learned in {walls[-1]:.0f}s", flush=True)
    return {"run": str(run), **_summary(run, walls)}


def alone(devset: Path, work: Path) -> dict[str, Any]:
    out = {}
    for root, task in SEQUENCE:
        run = work / f"alone-{task}"
        wall = _train(
            "fit", "--data", f"mvtec:{devset / root}", "--tasks", task, "--out", str(run), "--no-progress",
            "--no-report",
        )  # fmt: skip
        out[task] = _summary(run, [wall])
        print(f"  [alone] {task}: image AUROC {out[task]['final']['image_auroc']:.3f}", flush=True)
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"median": round(float(np.median(arr)), 2), "p99": round(float(np.percentile(arr, 99)), 2)}


def edge_cost(devset: Path, run: Path, work: Path, frames_per_task: int, threads: int) -> dict[str, Any]:
    """Export the run, then time the edge's scorer at the bundle's geometry and at a 256-px resize."""
    from linewatch.contract.frames import decode_file
    from linewatch.contract.geometry import Geometry
    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends.onnxruntime import OrtBackend
    from linewatch.edge.inference.frame_scorer import FrameScorer
    from linewatch.edge.model.bundle import open_bundle

    bundle_dir = work / f"bundle-{run.name}"
    done = subprocess.run(
        [sys.executable, "-m", "linewatch.export.cli", "--run", str(run), "--out", str(bundle_dir)],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"export failed:\n{done.stderr[-3000:]}")
    bundle = open_bundle(bundle_dir)
    backend = OrtBackend(bundle, "ort-cpu", BackendConfig(threads=threads))
    chosen = FrameScorer(bundle, backend)
    squeezed = FrameScorer(bundle, backend, Geometry.from_dict({"mode": "resize"}, bundle.input_hw))
    size_mb = sum(p.stat().st_size for p in bundle_dir.rglob("*") if p.is_file()) / 2**20
    out: dict[str, Any] = {"geometry": bundle.geometry, "bundle_mb": round(size_mb, 1), "threads": threads}
    for root, task in SEQUENCE:
        paths = sorted((devset / root / task / "test").glob("*/*"))[::7][:frames_per_task]
        frames = [f for f in (decode_file(p) for p in paths) if f is not None]
        times: dict[str, list[float]] = {"chosen": [], "resize": []}
        tiles = 0
        for frame in [frames[0], *frames]:  # the first call of each warms up and is not counted
            for name, scorer in (("chosen", chosen), ("resize", squeezed)):  # interleaved: fair on noise
                t0 = time.perf_counter()
                result = scorer.score(frame)
                times[name].append((time.perf_counter() - t0) * 1e3)
                tiles = result.tiles if name == "chosen" else tiles
        chosen_ms, resize_ms = _percentiles(times["chosen"][1:]), _percentiles(times["resize"][1:])
        out[task] = {
            "frame_hw": list(frames[0].shape[:2]),
            "tiles": tiles,
            "ms_chosen": chosen_ms,
            "ms_resize_256": resize_ms,
            "ratio_median": round(chosen_ms["median"] / resize_ms["median"], 2),
            "frames": len(frames),
        }
        print(
            f"  [edge] {task}: {chosen_ms['median']} ms ({tiles} tiles) vs {resize_ms['median']} ms resized"
        )
    return out


def peers(devset: Path, work: Path, venv: Path, weights: list[str], models: list[str]) -> dict[str, Any]:
    """anomalib PatchCore/PaDiM per task, scored by our metric code on their raw outputs."""
    from benchmarks.anomalib_peer import ensure_peer_venv, run_peer
    from linewatch.trainer import metrics as M
    from linewatch.trainer.data import load_task, read_masks

    python = ensure_peer_venv(venv)
    out: dict[str, Any] = {}
    for root, task in SEQUENCE:
        split = load_task(f"mvtec:{devset / root}", task)
        by_path = {str(s.path.relative_to(devset / root / task)): s for s in split.test}
        for model in models:
            for w in weights:
                key = f"{model}/{w}"
                res = run_peer(
                    python, devset, f"{root}/{task}", model, w, work / f"peer-{task}-{model}-{w}.npz"
                )
                if "error" in res:
                    out.setdefault(task, {})[key] = {"error": res["error"]}
                    print(f"  [anomalib] {task} {key}: {res['error'][:200]}", flush=True)
                    continue
                samples = [by_path[str(p)] for p in res["paths"]]
                labels = np.array([s.label for s in samples])
                maps = np.asarray(res["maps"], dtype=np.float32)
                masks, has_mask = read_masks(samples, maps.shape[1:3])
                values = {**M.image_metrics(labels, np.asarray(res["scores"], np.float64))}
                values.update(M.pixel_metrics(masks, maps, has_mask, labels=labels))
                out.setdefault(task, {})[key] = {**M.json_safe(values), "info": res["info"]}
                print(f"  [anomalib] {task} {key}: image AUROC {values['image_auroc']:.3f}", flush=True)
    return out


def _fmt(v: Any) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.3f}"


def markdown(result: dict[str, Any]) -> str:
    tasks = [t for _, t in SEQUENCE]
    lines = ["# Real-image benchmark", "", f"Machine: {result['machine']}", ""]
    lines += [
        "| run | " + " | ".join(f"{t} image AUROC" for t in tasks) + " | forgetting | AU-PRO (bs / kol) |"
    ]
    lines += ["|---" * (len(tasks) + 3) + "|"]
    for name, c in result.get("continual", {}).items():
        last = c["final_by_task"]
        aupro = f"{_fmt(last['aupro'].get('ball_screw'))} / {_fmt(last['aupro'].get('commutator'))}"
        row = [f"continual {name}"] + [_fmt(last["image_auroc"].get(t)) for t in tasks]
        lines.append("| " + " | ".join([*row, _fmt(c["forgetting"]["image_auroc"]), aupro]) + " |")
    for task, a in result.get("alone", {}).items():
        cells = [_fmt(a["final"]["image_auroc"]) if t == task else "" for t in tasks]
        lines.append("| " + " | ".join([f"alone {task}", *cells, "", _fmt(a["final"]["aupro"])]) + " |")
    for task, models in result.get("anomalib", {}).items():
        for key, v in models.items():
            cells = [_fmt(v.get("image_auroc")) if t == task else "" for t in tasks]
            lines.append(
                "| " + " | ".join([f"anomalib {key} ({task})", *cells, "", _fmt(v.get("aupro"))]) + " |"
            )
    edge = result.get("edge", {})
    if edge:
        lines += [
            "",
            f"Edge (onnxruntime CPU, {edge.get('threads')} threads), bundle {edge.get('bundle_mb')} MB:",
            "",
        ]
        lines += [
            "| task | frame | tiles | ms/frame chosen (median / p99) | ms/frame 256-px resize | ratio |"
        ]
        lines += ["|---|---|---|---|---|---|"]
        for t in tasks:
            e = edge.get(t)
            if e:
                lines.append(
                    f"| {t} | {e['frame_hw'][1]}x{e['frame_hw'][0]} | {e['tiles']} | {e['ms_chosen']['median']} / "
                    f"{e['ms_chosen']['p99']} | {e['ms_resize_256']['median']} / {e['ms_resize_256']['p99']} | "
                    f"{e['ratio_median']} |"
                )
    by_variant = result.get("edge_by_variant", {})
    if by_variant:
        lines += [
            "",
            "Trade-off per variant (final image AUROC of the continual run; edge ms/frame median):",
            "",
        ]
        lines += ["| variant | " + " | ".join(f"{t} AUROC / ms" for t in tasks) + " | bundle MB |"]
        lines += ["|---" * (len(tasks) + 2) + "|"]
        for name, e in by_variant.items():
            last = result.get("continual", {}).get(name, {}).get("final_by_task", {}).get("image_auroc", {})
            cells = [f"{_fmt(last.get(t))} / {e[t]['ms_chosen']['median']}" if t in e else "-" for t in tasks]
            lines.append(f"| {name} | " + " | ".join(cells) + f" | {e.get('bundle_mb')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--work", type=Path, help="where runs and bundles go (default: a temp dir)")
    p.add_argument("--parts", default="continual,alone,edge,anomalib")
    p.add_argument("--variants", default="default,resize,lite1,lite2")
    p.add_argument("--edge-frames", type=int, default=12, help="test frames timed per task")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--peer-venv", type=Path, default=ROOT / "benchmarks" / ".peer-venv")
    p.add_argument("--peer-weights", default="lite0,lite0-defaults,default")
    p.add_argument("--max-train", type=int, help="a seeded subset: train images per task")
    p.add_argument("--max-test", type=int, help="a seeded subset: test images per test folder")
    args = p.parse_args(argv)
    if not args.devset.is_dir():
        print(f"dev set not found at {args.devset}: nothing to measure", file=sys.stderr)
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="real-images-"))
    if args.max_train or args.max_test:  # the same linked subset for our runs and the peers
        from linewatch.trainer.data.subset import link_subset

        sub = work / "devset-subset"
        for root, task in SEQUENCE:
            if not (sub / root / task).exists():
                n_test = args.max_test or 10**6
                link_subset(
                    args.devset / root / task, sub / root / task, args.max_train or 10**6, n_test, n_test
                )
        args.devset = sub
    parts = set(args.parts.split(","))
    args.out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        "devset": str(args.devset),
        "subset": {"max_train": args.max_train, "max_test_per_folder": args.max_test},
        "work": str(work),
    }
    json_path, md_path = args.out / "real_images.json", args.out / "real_images.md"

    def save() -> None:  # after every part: partial results survive a long run cut short
        json_path.write_text(json.dumps(result, indent=1))
        md_path.write_text(markdown(result))

    if "continual" in parts:
        result["continual"] = {}
        for variant in args.variants.split(","):
            result["continual"][variant] = continual(args.devset, work, variant)
            save()
    if "alone" in parts:
        result["alone"] = alone(args.devset, work)
        save()
    if "edge" in parts:  # every variant's bundle: accuracy vs ms/frame vs size, side by side
        result["edge_by_variant"] = {}
        for variant in args.variants.split(","):
            run = work / f"continual-{variant}"
            if not (run / "metrics.json").exists():
                result.setdefault("continual", {})[variant] = continual(args.devset, work, variant)
            cost = edge_cost(args.devset, run, work, args.edge_frames, args.threads)
            result["edge_by_variant"][variant] = cost
            if variant == "default":
                result["edge"] = cost
            save()
    if "anomalib" in parts:
        weights = args.peer_weights.split(",")
        result["anomalib"] = peers(args.devset, work, args.peer_venv, weights, ["patchcore", "padim"])
        save()
    print(md_path.read_text())
    print(f"written: {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
