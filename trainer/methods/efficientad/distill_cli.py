"""The `distill-teacher` command line: options and the run that distils or finds a cached teacher.

The distillation itself, its budgets and the teacher files are `distill.py`; this is only the
user's way in (`linewatch-train distill-teacher`, or this module with `python -m`).
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linewatch.trainer.methods.efficientad.distill import (
    CHECKPOINT_EVERY,
    CPU_BUDGET,
    GPU_BUDGET,
    DistillConfig,
    cached_teacher,
    default_budget,
    default_cache_dir,
    distill_teacher,
    load_teacher,
    save_teacher,
)


def _csv(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _user_images(spec: str, tasks: list[str], input_hw: tuple[int, int]) -> np.ndarray:
    from linewatch.trainer.data import load_task, read_images

    paths = [s.path for t in tasks for s in load_task(spec, t).train]
    return read_images(paths, input_hw)


def build_parser(
    prog: str = "python -m linewatch.trainer.methods.efficientad.distill_cli",
) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Distil EfficientAD's PDN teacher offline.")
    add_arguments(p)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options, on any parser: `linewatch-train distill-teacher` mounts them as a subcommand.

    Defaults are `DistillConfig`'s (which `[efficientad]` also takes its PDN defaults from).
    """
    d = DistillConfig()
    p.add_argument("--size", choices=("s", "m"), default=d.size, help="PDN-S or PDN-M")
    p.add_argument("--out-channels", type=int, default=d.out_channels)
    p.add_argument("--width", type=float, default=d.width, help="hidden-channel multiplier (1.0 = published)")
    p.add_argument("--image-size", type=int, default=d.input_hw[0])
    p.add_argument(
        "--steps",
        type=int,
        help=f"default: {GPU_BUDGET.steps} on a GPU, {CPU_BUDGET.steps} on a CPU (with --pool and --crop)",
    )
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, help=f"default {GPU_BUDGET.lr} on a GPU, {CPU_BUDGET.lr} on a CPU")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--backbone", default=d.backbone)
    p.add_argument("--layers", type=lambda s: tuple(int(v) for v in _csv(s)), default=d.layers)
    p.add_argument("--backbone-weights", type=Path)
    p.add_argument("--padding", action="store_true", help="padded PDN (keeps the border; not published)")
    p.add_argument(
        "--pool",
        type=int,
        help=f"fixed pool of views with cached targets (0: fresh views); default "
        f"{GPU_BUDGET.pool} on a GPU, {CPU_BUDGET.pool} on a CPU",
    )
    p.add_argument(
        "--crop",
        type=int,
        help=f"distil on random CROPxCROP crops of the views (0: whole views); default "
        f"{GPU_BUDGET.crop or 0} on a GPU, {CPU_BUDGET.crop} on a CPU",
    )
    p.add_argument("--checkpoint-every", type=int, default=CHECKPOINT_EVERY, help="steps between checkpoints")
    p.add_argument("--sources", type=_csv, default=[], help="scikit-image photographs (default: all)")
    p.add_argument("--data", help="FORMAT:ROOT: also distil on these tasks' good training images")
    p.add_argument("--tasks", type=_csv, default=[])
    p.add_argument("--cache-dir", type=Path, help=f"default {default_cache_dir()} ($LINEWATCH_CACHE)")
    p.add_argument("--out", type=Path, help="write exactly here instead of the cache")
    p.add_argument("--force", action="store_true", help="distil again even if cached")
    p.add_argument(
        "--device",
        default="auto",
        help="where to distil (auto: cuda when present, else cpu); not part of the key",
    )
    p.add_argument("--no-progress", action="store_true")


def main(argv: Sequence[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


def run(args: argparse.Namespace) -> int:
    """Distil (or find in the cache) the teacher the options describe; print where it is."""
    hw = (args.image_size, args.image_size)
    budget = default_budget(args.device)
    crop = budget.crop_for(hw) if args.crop is None else ((args.crop, args.crop) if args.crop else None)
    user = None
    if args.data:
        if not args.tasks:
            print("error: --data needs --tasks", file=sys.stderr)
            return 2
        user = _user_images(args.data, args.tasks, hw)
    cfg = DistillConfig(
        size=args.size,
        out_channels=args.out_channels,
        width=args.width,
        backbone=args.backbone,
        layers=tuple(args.layers),
        backbone_weights=str(args.backbone_weights) if args.backbone_weights else None,
        input_hw=hw,
        padding=args.padding,
        pool=budget.pool if args.pool is None else args.pool,
        crop_hw=crop,
        steps=args.steps or budget.steps,
        batch_size=args.batch_size,
        lr=budget.lr if args.lr is None else args.lr,
        seed=args.seed,
        sources=tuple(args.sources),
        user_images=None if user is None else hashlib.sha256(user.tobytes()).hexdigest()[:16],
    )
    try:
        if args.out is not None:
            if args.out.exists() and not args.force:
                print(f"error: {args.out} exists (use --force)", file=sys.stderr)
                return 2
            ckpt = args.out.with_name(f"{args.out.name}.ckpt")
            teacher, mean, std, record = distill_teacher(
                cfg, user, not args.no_progress, args.device, ckpt, args.checkpoint_every
            )
            path = save_teacher(args.out, teacher, mean, std, record)
            ckpt.unlink(missing_ok=True)
        else:
            cache = args.cache_dir or default_cache_dir()
            if args.force:
                (cache / cfg.filename()).unlink(missing_ok=True)
            path = cached_teacher(
                cfg,
                cache,
                user,
                not args.no_progress,
                device=args.device,
                checkpoint_every=args.checkpoint_every,
            )
    except (ValueError, OSError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    _, record = load_teacher(path)
    print(f"teacher: {path}")
    print(f"  final distillation loss {record['final_loss']}, {record['images_seen']} images seen")
    print(f'  use it with: [efficientad] teacher = "{path}"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
