"""Choose the geometry on training images only: held-out good frames and synthetic defects made on them.

The dev set's test split must never choose a setting (the project is checked on other real data
too). This benchmark splits each dev task's *training* good images into a fitting part and a
held-out part, paints synthetic defects onto half of the held-out frames at their native resolution,
and fits one model per candidate geometry through the trainer's CLI on the fitting part, scored on
the held-out part. The defects (``trainer/data/validation_defects.py``, which ``auto`` uses for the same
choice inside ``fit``) are decided up front, not tuned:

- *blobs*: DRAEM's Perlin-noise masks filled with photograph texture
  (``trainer/data/synthetic_anomalies.py``), at 16 to 64 noise cells per side, so a blob is about
  1/32 to 1/128 of the frame's side (the few-hundred-pixel pits of the dev set's README), the
  texture at 20 to 60 % opacity;
- *scratches*: one to three thin polylines, 1 to 2 px wide at native resolution, 5 to 20 % of the
  frame's diagonal long, brighter or darker than the part by 10 to 30 grey levels.

Why this faint: a first run with 2-3x stronger defects (texture at 50-100 % opacity, scratches of
25-60 grey levels) saturated image AUROC at 1.000 for both resize and tile on ball_screw, so it could
not choose; a validation set must leave the candidates room to differ.

Candidates: ``resize`` (squeeze to the model input), ``tile`` (what ``auto`` picks for large
frames), ``tile --context`` (tiles plus the whole frame resized, maps averaged). Writes
``geometry_validation.json`` and ``.md`` under ``--out``: image AUROC and AU-PRO per task and
candidate on the synthetic defects (cells: image AUROC / AU-PRO).

    python benchmarks/geometry_validation.py --fit 30 --held-out 24
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TASKS = [("bsdata", "ball_screw"), ("kolektor", "commutator"), ("casting", "impeller")]
CANDIDATES: dict[str, list[str]] = {
    "resize": ["--geometry", "resize"],
    "tile": [],  # the default: auto, which tiles every dev task larger than 2x the model input
    "tile+context": ["--context"],
}


def build_task(src: Path, out: Path, n_fit: int, n_held: int, seed: int) -> dict[str, int]:
    """An MVTec-layout task from ``src``'s train/good only: fit images, held-out good, synthetic defects."""
    from linewatch.contract.frames import decode_file
    from linewatch.trainer.data.synthetic_anomalies import texture_source
    from linewatch.trainer.data.validation_defects import KINDS, paint_defect

    rng = np.random.default_rng(seed)
    files = sorted((src / "train" / "good").iterdir())
    order = rng.permutation(len(files))
    fit, held = [files[i] for i in order[:n_fit]], [files[i] for i in order[n_fit : n_fit + n_held]]
    for sub in ("train/good", "test/good", "test/synthetic", "ground_truth/synthetic"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    for p in fit:
        (out / "train" / "good" / p.name).symlink_to(p.resolve())
    textures = list(texture_source().values())
    good, defect = held[: n_held // 2], held[n_held // 2 :]
    for p in good:
        (out / "test" / "good" / p.name).symlink_to(p.resolve())
    for i, p in enumerate(defect):
        frame = decode_file(p)  # BGR, as OpenCV writes it back
        image, mask = paint_defect(frame, KINDS[i % 2], rng, textures)
        cv2.imwrite(str(out / "test" / "synthetic" / f"{i:03d}.png"), image)
        cv2.imwrite(
            str(out / "ground_truth" / "synthetic" / f"{i:03d}_mask.png"), (mask * 255).astype(np.uint8)
        )
    return {"fit": len(fit), "good": len(good), "synthetic": len(defect)}


def fit(data: Path, task: str, run: Path, flags: list[str]) -> dict[str, Any]:
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", "linewatch.trainer.cli", "fit", "--data", f"mvtec:{data}", "--tasks", task]
    cmd += ["--out", str(run), "--no-progress", "--no-report", *flags]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    m = json.loads((run / "metrics.json").read_text())
    return {
        "image_auroc": m["final"]["image_auroc"],
        "aupro": m["final"].get("aupro"),
        "geometry": m.get("geometry"),
        "fit_s": round(time.perf_counter() - t0, 1),
    }


def main(argv: list[str] | None = None) -> int:
    from linewatch.contract.geometry import AUTO_MAX_SHRINK
    from linewatch.trainer.data import image_size

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset")
    p.add_argument("--work", type=Path, default=Path("/tmp/linewatch-geometry-validation"))
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    p.add_argument("--fit", type=int, default=30, help="training images fitted per task")
    p.add_argument(
        "--held-out", type=int, default=24, help="held-out training images: half good, half painted"
    )
    p.add_argument("--candidates", default=",".join(CANDIDATES))
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)
    if not args.devset.is_dir():
        print(f"skipped: no dev set at {args.devset}")
        return 0
    result: dict[str, Any] = {"fit": args.fit, "held_out": args.held_out, "tasks": {}}
    for root, task in TASKS:
        data = args.work / root
        if not (data / task).is_dir():
            counts = build_task(args.devset / root / task, data / task, args.fit, args.held_out, args.seed)
            print(f"{task}: {counts}", flush=True)
        names = args.candidates.split(",")
        h, w = image_size(next((data / task / "train" / "good").iterdir()))
        if max(h, w) <= AUTO_MAX_SHRINK * 256:  # auto resizes such frames: every candidate is `resize`
            names = [n for n in names if n == "resize"]
        for name in names:
            res = fit(data, task, args.work / "runs" / f"{task}-{name}", CANDIDATES[name])
            result["tasks"].setdefault(task, {})[name] = res
            print(
                f"  {task} {name}: image AUROC {res['image_auroc']:.3f} AU-PRO {res['aupro']} ({res['fit_s']} s)"
            )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "geometry_validation.json").write_text(json.dumps(result, indent=2))
    names = args.candidates.split(",")
    lines = ["| task | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for task, by in result["tasks"].items():
        cells = [
            f"{by[n]['image_auroc']:.3f} / {by[n]['aupro'] or 0:.3f}" if n in by else "=resize" for n in names
        ]
        lines.append(f"| {task} | " + " | ".join(cells) + " |")
    (args.out / "geometry_validation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
