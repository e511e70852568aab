"""Coreset selection speed: our greedy k-center against anomalib's KCenterGreedy loop.

The workload of the issue: select 20,480 of 204,800 Lite0 patch features (200 generated
images at 256x256). anomalib's loop is re-implemented here step for step (a sparse random
projection to the Johnson-Lindenstrauss dimension for eps=0.9, then per step
`F.pairwise_distance` to the new centre, `torch.minimum`, `argmax`, and a membership check on
the Python list of chosen indices) so both run in the same process on the same features.

Both are timed over the same number of steps, interleaved (A B A B) so machine noise hits
both; ours is also run to completion. Quality is the k-center objective (coverage radius
in the original feature space) of our full selection against a random subset of equal size.

    python benchmarks/coreset_speed.py [--images 200] [--select 20480] [--steps 300] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from linewatch.trainer.data import load_task, read_images
from linewatch.trainer.data.generate import generate_dataset
from linewatch.trainer.methods.patchcore.coreset import coverage_radius, greedy_coreset
from linewatch.trainer.methods.registry import build_method


def lite0_patches(n_images: int, seed: int) -> torch.Tensor:
    with tempfile.TemporaryDirectory() as tmp:
        generate_dataset(Path(tmp), ["brick"], n_train=n_images, n_test_good=1, n_test_defect=1, seed=seed)
        split = load_task(f"mvtec:{tmp}", "brick")
        images = read_images([s.path for s in split.train], (256, 256))
    return build_method("patchcore", progress=False).features(images)


def jl_dim(n: int, eps: float = 0.9) -> int:
    return int(4 * math.log(n) / (eps**2 / 2 - eps**3 / 3))


def anomalib_style_steps(features: torch.Tensor, steps: int, seed: int) -> float:
    """Seconds for `steps` iterations of anomalib's KCenterGreedy loop."""
    gen = torch.Generator().manual_seed(seed)
    n, d = features.shape
    k = jl_dim(n)
    density = 1 / math.sqrt(d)
    mask = torch.rand(d, k, generator=gen) < density
    signs = torch.where(torch.rand(d, k, generator=gen) < 0.5, -1.0, 1.0)
    proj = (mask * signs) / math.sqrt(density * k)
    feats = features @ proj
    min_distances = None
    chosen: list[int] = []
    idx = int(torch.randint(n, (1,), generator=gen))
    t0 = time.perf_counter()
    for _ in range(steps):
        distance = F.pairwise_distance(feats, feats[[idx]], p=2).reshape(-1, 1)
        min_distances = distance if min_distances is None else torch.minimum(min_distances, distance)
        idx = int(torch.argmax(min_distances).item())
        if idx in chosen:
            raise ValueError("selected twice")
        min_distances[idx] = 0
        chosen.append(idx)
    return time.perf_counter() - t0


def ours_steps(features: torch.Tensor, steps: int, seed: int, proj_dim: int | None) -> float:
    t0 = time.perf_counter()
    greedy_coreset(features, steps, proj_dim=proj_dim, seed=seed, progress=False)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=200)
    p.add_argument("--select", type=int, default=20_480)
    p.add_argument("--steps", type=int, default=300, help="steps per timed repeat")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/coreset_speed.json"))
    args = p.parse_args(argv)
    torch.manual_seed(0)

    feats = lite0_patches(args.images, seed=0)
    print(f"{feats.shape[0]} patches x {feats.shape[1]} dims; selecting {args.select}")
    rates: dict[str, list[float]] = {"anomalib_style": [], "ours_proj32": [], "ours_proj128": []}
    for r in range(args.repeats):  # interleaved
        rates["anomalib_style"].append(args.steps / anomalib_style_steps(feats, args.steps, r))
        rates["ours_proj32"].append(args.steps / ours_steps(feats, args.steps, r, 32))
        rates["ours_proj128"].append(args.steps / ours_steps(feats, args.steps, r, 128))
        print(f"repeat {r}: " + ", ".join(f"{k} {v[-1]:.0f}/s" for k, v in rates.items()))
    ratios = [a / b for a, b in zip(rates["ours_proj32"], rates["anomalib_style"], strict=True)]

    t0 = time.perf_counter()
    idx = greedy_coreset(feats, args.select, proj_dim=32, seed=0, progress=True)
    full_s = time.perf_counter() - t0
    radius = coverage_radius(feats, feats[idx])
    rand = coverage_radius(feats, feats[torch.randperm(len(feats))[: args.select]])

    def summary(v: list[float]) -> dict:
        return {"median": statistics.median(v), "p99": float(np.percentile(v, 99)), "all": v}

    result = {
        "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()},
        "workload": {"patches": int(feats.shape[0]), "dims": int(feats.shape[1]), "select": args.select},
        "selections_per_s": {k: summary(v) for k, v in rates.items()},
        "speedup_ours_vs_anomalib_style": summary(ratios),
        "anomalib_style_projected_dims": jl_dim(feats.shape[0]),
        "ours_full_selection_s": full_s,
        "anomalib_style_full_selection_estimate_s": args.select / statistics.median(rates["anomalib_style"]),
        "coverage_radius": {"ours_proj32": radius, "random_subset": rand},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result.items() if k != "selections_per_s"}, indent=1, default=str))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
