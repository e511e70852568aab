"""The one synthetic data generator: MVTec-layout datasets and line videos with known defects.

Parts are views of photographs that ship with scikit-image (offline), one photograph per task;
defects are drawn with exact masks (``defects.py``). Used by the tests, the demo and the benchmarks.

    python -m linewatch.trainer.data.generate --out ROOT --tasks brick,grass,gravel --n-train 60 --seed 0 [--size 256]
    python -m linewatch.trainer.data.generate --video line.avi --tasks brick --frames 60 --defect-every 5

Sizes are (W, H) or one int; ``defect_scale`` shrinks or grows defects (e.g. 2048x1536 frames with
3-15 px defects: ``--size 2048x1536 --defect-scale 0.025``; 0.05 at 1024x768).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from linewatch.trainer.data.defects import DEFECT_TYPES
from linewatch.trainer.data.source_photos import available_sources
from linewatch.trainer.data.synth import SizeLike, as_size_wh, check_defect_types, check_tasks, render_part
from linewatch.trainer.data.video import (
    FrameTruth,
    generate_video,
    read_truth_json,
    read_video,
    render_frame,
    write_truth_json,
)

__all__ = [
    "DEFECT_TYPES",
    "FrameTruth",
    "available_sources",
    "generate_dataset",
    "generate_task",
    "generate_video",
    "main",
    "read_truth_json",
    "read_video",
    "render_frame",
    "write_truth_json",
]

TRAIN, TEST_GOOD, TEST_DEFECT = 0, 1, 2
"""Random stream ids, one per split, so split sizes never change each other's images."""


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def generate_task(
    task_dir: Path,
    task: str,
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_defect: int = 15,
    size: SizeLike = 256,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    defect_scale: float = 1.0,
) -> dict[str, object]:
    """Write one task folder in the MVTec layout; returns the task's provenance record."""
    size_wh = as_size_wh(size)
    types = check_defect_types(defect_types)
    good_train, good_test = task_dir / "train" / "good", task_dir / "test" / "good"
    for folder in (good_train, good_test):
        folder.mkdir(parents=True, exist_ok=True)
    for i in range(n_train):
        _write_png(good_train / f"{i:03d}.png", render_part(task, size_wh, seed, TRAIN, i)[0])
    for i in range(n_test_good):
        _write_png(good_test / f"{i:03d}.png", render_part(task, size_wh, seed, TEST_GOOD, i)[0])
    counts = dict.fromkeys(types, 0)
    for i in range(n_test_defect):
        kind = types[i % len(types)]
        image, mask = render_part(task, size_wh, seed, TEST_DEFECT, i, kind, defect_scale)
        assert mask is not None
        (task_dir / "test" / kind).mkdir(exist_ok=True)
        (task_dir / "ground_truth" / kind).mkdir(parents=True, exist_ok=True)
        name = f"{counts[kind]:03d}"
        _write_png(task_dir / "test" / kind / f"{name}.png", image)
        if not cv2.imwrite(
            str(task_dir / "ground_truth" / kind / f"{name}_mask.png"), mask.astype(np.uint8) * 255
        ):
            raise OSError(f"could not write mask for {name} in {task_dir}")
        counts[kind] += 1
    return {
        "generator": "linewatch.trainer.data.generate",
        "task": task,
        "source": f"skimage.data.{task}",
        "seed": seed,
        "size_wh": list(size_wh),
        "defect_scale": defect_scale,
        "n_train": n_train,
        "n_test_good": n_test_good,
        "n_test_defect": counts,
    }


def generate_dataset(
    root: Path,
    tasks: Sequence[str],
    n_train: int = 60,
    n_test_good: int = 15,
    n_test_defect: int = 15,
    size: SizeLike = 256,
    seed: int = 0,
    defect_types: Sequence[str] | None = None,
    defect_scale: float = 1.0,
    overwrite: bool = False,
) -> Path:
    """Write ``tasks`` under ``root`` in the MVTec layout (PNG images, 0/255 ``_mask.png`` masks).

    Each task is written to a hidden folder and renamed into place, so an interrupted run never
    leaves a half task that looks complete. An existing task folder is replaced only with
    ``overwrite`` (stale files from a bigger earlier run would silently join the dataset).
    """
    tasks = check_tasks(tasks)
    check_defect_types(defect_types)
    as_size_wh(size)
    if n_train < 1 or n_test_good < 0 or n_test_defect < 0:
        raise ValueError("n_train must be >= 1 and the test counts >= 0")
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for task in tasks:
        final = root / task
        if final.exists() and not overwrite:
            raise FileExistsError(f"{final} exists; pass overwrite=True (--overwrite) to replace it")
        partial = root / f".{task}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        record = generate_task(
            partial, task, n_train, n_test_good, n_test_defect, size, seed, defect_types, defect_scale
        )
        (partial / "synthetic.json").write_text(json.dumps(record, indent=1) + "\n")
        if final.exists():
            shutil.rmtree(final)
        partial.rename(final)
    return root


def _parse_size(text: str) -> tuple[int, int]:
    """``256`` or ``WxH`` (``2048x1536``)."""
    try:
        w, _, h = text.lower().partition("x")
        return as_size_wh((int(w), int(h or w)))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"size must be N or WxH, got {text!r}") from exc


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser(prog: str = "python -m linewatch.trainer.data.generate") -> argparse.ArgumentParser:
    """The generator's options; ``linewatch-train generate`` can mount this parser as it is."""
    p = argparse.ArgumentParser(
        prog=prog, description="Write synthetic MVTec-layout datasets or line videos."
    )
    p.add_argument("--out", type=Path, help="dataset root to write (MVTec layout)")
    p.add_argument(
        "--tasks", type=_csv, default=["brick", "grass", "gravel"], help="comma-separated source names"
    )
    p.add_argument("--n-train", type=int, default=60)
    p.add_argument("--n-test-good", type=int, default=15)
    p.add_argument("--n-test-defect", type=int, default=15)
    p.add_argument("--size", type=_parse_size, default=(256, 256), help="N or WxH (default 256)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--defect-types", type=_csv, default=None, help=f"subset of {','.join(DEFECT_TYPES)}")
    p.add_argument("--defect-scale", type=float, default=1.0, help="multiplies defect sizes")
    p.add_argument("--overwrite", action="store_true", help="replace existing task folders")
    p.add_argument("--video", type=Path, help="write a video of the first task instead (+ .json truth)")
    p.add_argument("--frames", type=int, default=60)
    p.add_argument("--defect-every", type=int, default=5)
    p.add_argument("--fps", type=float, default=10)
    p.add_argument("--list-sources", action="store_true", help="print the task names and exit")
    return p


def run(args: argparse.Namespace) -> int:
    """Act on parsed options; separate from ``main`` so another CLI can reuse the parser."""
    if args.list_sources:
        print("\n".join(available_sources()))
        return 0
    if args.video is not None:
        truths = generate_video(
            args.video,
            args.tasks[0],
            n_frames=args.frames,
            defect_every=args.defect_every,
            size=args.size,
            fps=args.fps,
            seed=args.seed,
            defect_types=args.defect_types,
            defect_scale=args.defect_scale,
        )
        truth = write_truth_json(args.video.with_suffix(".json"), truths, video=args.video)
        print(
            f"wrote {args.video} ({len(truths)} frames, {sum(t.defective for t in truths)} defective) and {truth}"
        )
        return 0
    if args.out is None:
        print("error: --out ROOT (or --video FILE) is required", file=sys.stderr)
        return 2
    generate_dataset(
        args.out,
        args.tasks,
        n_train=args.n_train,
        n_test_good=args.n_test_good,
        n_test_defect=args.n_test_defect,
        size=args.size,
        seed=args.seed,
        defect_types=args.defect_types,
        defect_scale=args.defect_scale,
        overwrite=args.overwrite,
    )
    print(f"wrote {', '.join(args.tasks)} to {args.out} (use --data mvtec:{args.out})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except (ValueError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
