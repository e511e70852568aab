"""EfficientAD teacher quality against its distillation budget, on this machine (issue 18).

Distils the PDN teacher under several recipes (image size, crop, fixed pool or fresh views,
batch, generic photographs alone or + a task's good images) and, at each step budget,
measures the teacher's feature-regression loss on a FIXED held-out set of generic views at
the model resolution: the views are drawn with their own seed, their Lite0 targets are
computed once, and the loss is the mean squared error of the teacher's de-normalised
prediction against the raw target, divided per channel by the held-out target's variance
(1.0 = predicting each channel's mean; lower is better). Every recipe is judged on the same
views at the same resolution, so a teacher distilled on 128 px crops is scored at 256 px,
where the model uses it.

Also records the median and p99 time per step (the first step is warm-up and left out)
and a reference matmul speed measured before and after, so step times taken on a busy
machine can be scaled to a quiet one: quiet_step ~= step * ref_gflops / quiet_ref_gflops.

    python benchmarks/efficientad_teacher_budget.py --out-dir /tmp/ea-budget
    python benchmarks/efficientad_teacher_budget.py --recipes cpu,rescaled --budgets 0,50,100,200

Writes budget.json and budget.md in --out-dir. Recipes run as parallel processes
(--jobs), one torch thread each, so their step times are contended by each other too.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

RECIPES: dict[str, dict] = {
    # the published recipe: fresh 256 px views, batch 8 (timed only; its loss needs hours here)
    "published": {"image_size": 256, "crop": None, "pool": 0, "batch": 8, "user": False},
    # the CPU default candidate: a fixed pool of 256 px views, distilled on random 128 px crops
    "cpu": {"image_size": 256, "crop": 128, "pool": 256, "batch": 8, "user": False},
    # lower resolution by rescaling whole views to 128 px (the scale changes 2x)
    "rescaled": {"image_size": 128, "crop": None, "pool": 256, "batch": 8, "user": False},
    # the candidate plus the task's own good images (half of every batch)
    "cpu+user": {"image_size": 256, "crop": 128, "pool": 256, "batch": 8, "user": True},
    # the candidate with half the batch
    "cpu-b4": {"image_size": 256, "crop": 128, "pool": 256, "batch": 4, "user": False},
    # the candidate at a 10x learning rate (few steps on a CPU)
    "cpu-lr1e-3": {"image_size": 256, "crop": 128, "pool": 256, "batch": 8, "user": False, "lr": 1e-3},
    # fixed pool of whole 256 px views (no crop)
    "pool256": {"image_size": 256, "crop": None, "pool": 256, "batch": 8, "user": False},
}


def reference_gflops(seconds: float = 2.0) -> float:
    """A fixed 512x512 float32 matmul loop on the current torch threads: the machine's speed now."""
    import torch

    a, b = torch.randn(512, 512), torch.randn(512, 512)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return round(n * 2 * 512**3 / (time.perf_counter() - t0) / 1e9, 2)


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    import torch

    from linewatch.trainer.backbones import DEFAULT_BACKBONE, create_feature_extractor
    from linewatch.trainer.methods.efficientad.distill import DistillConfig, DistillTarget, distill_teacher
    from linewatch.trainer.methods.efficientad.generic import generic_images, generic_sources

    torch.set_num_threads(args.threads)
    r = RECIPES[name]
    budgets = sorted({int(b) for b in args.budgets.split(",")})
    steps = args.timing_steps if name == "published" else max(budgets)
    size = int(r["image_size"])
    user = None
    if r["user"]:
        from linewatch.trainer.data import load_task, read_images

        train = load_task(args.user_data, args.user_task).train
        pick = np.random.default_rng(args.seed).permutation(len(train))[: args.user_n]
        user = read_images([train[i].path for i in sorted(pick)], (size, size))
    cfg = DistillConfig(
        input_hw=(size, size),
        crop_hw=(r["crop"], r["crop"]) if r["crop"] else None,
        pool=int(r["pool"]),
        batch_size=int(r["batch"]),
        lr=float(r.get("lr", DistillConfig.lr)),
        steps=steps,
        seed=args.seed,
    )
    ref_before = reference_gflops()
    # the fixed held-out views and their raw targets at the model resolution
    eval_hw = (args.eval_size, args.eval_size)
    views = generic_images(
        args.eval_views, eval_hw, np.random.default_rng([args.seed, 12345]), generic_sources()
    )
    extractor = create_feature_extractor(DEFAULT_BACKBONE, cfg.layers, None)
    ev_target = DistillTarget(extractor, cfg.out_channels, eval_hw, cfg.seed, cfg.padding).eval()
    with torch.inference_mode():
        raw = torch.cat([ev_target.raw(torch.from_numpy(views[i : i + 8])) for i in range(0, len(views), 8)])
    var = raw.transpose(0, 1).flatten(1).var(dim=1).view(1, -1, 1, 1)

    curve: list[dict] = []
    t_start = time.perf_counter()

    def evaluate(step: int, teacher, frame_input, target) -> None:
        if name == "published" or step not in budgets:
            return
        teacher.eval()
        with torch.inference_mode():
            outs = [
                teacher(frame_input(torch.from_numpy(views[i : i + 8]).to(target.mean.device))).cpu()
                for i in range(0, len(views), 8)
            ]
        teacher.train()
        pred = torch.cat(outs) * target.std.cpu() + target.mean.cpu()
        loss = float((((pred - raw) ** 2) / var).mean())
        curve.append(
            {
                "step": step,
                "heldout_loss": round(loss, 4),
                "elapsed_s": round(time.perf_counter() - t_start, 1),
            }
        )
        print(f"[{name}] step {step}: held-out loss {loss:.4f}", flush=True)
        (args.out_dir / f"{name}.partial.json").write_text(json.dumps({"curve": curve, "step_times": times}))

    times: list[float] = []
    last = [time.perf_counter()]

    def on_step(step: int, teacher, frame_input, target) -> None:
        now = time.perf_counter()
        times.append(now - last[0])
        evaluate(step, teacher, frame_input, target)
        last[0] = time.perf_counter()

    _, _, _, record = distill_teacher(
        cfg, user, False, args.device, log=lambda m: print(f"[{name}] {m}"), on_step=on_step
    )
    step_times = times[1:] or times
    return {
        "recipe": name,
        **r,
        "steps_run": steps,
        "step_s_median": round(float(np.median(step_times)), 3),
        "step_s_p99": round(float(np.percentile(step_times, 99)), 3),
        "total_s": record["seconds"],
        "reference_gflops_before": ref_before,
        "reference_gflops_after": reference_gflops(),
        "train_loss_last20": record["final_loss"],
        "curve": curve,
        "threads": args.threads,
        "device": record["device"],
    }


def _result(name: str, out_dir: Path) -> dict | None:
    """A recipe's result; one stopped early (--merge-only after a kill) from its partial curve."""
    path, partial = out_dir / f"{name}.json", out_dir / f"{name}.partial.json"
    if path.is_file():
        return json.loads(path.read_text())
    if not partial.is_file():
        return None
    d = json.loads(partial.read_text())
    times = d["step_times"][1:] or d["step_times"]
    return {
        "recipe": name,
        **RECIPES[name],
        "steps_run": len(d["step_times"]),
        "step_s_median": round(float(np.median(times)), 3),
        "step_s_p99": round(float(np.percentile(times, 99)), 3),
        "reference_gflops_before": "-",
        "reference_gflops_after": "-",
        "curve": d["curve"],
        "stopped_early": True,
    }


def markdown(results: list[dict], meta: dict) -> str:
    budgets = sorted({c["step"] for r in results for c in r["curve"]})
    lines = [
        "# EfficientAD teacher: quality against distillation budget",
        "",
        f"Run {meta['started']} on {meta['machine']}; command: `{meta['command']}`.",
        "Held-out loss: standardised feature-regression MSE on "
        f"{meta['eval_views']} fixed generic views at {meta['eval_size']} px (1.0 = channel means; lower is better).",
        "Step times are CONTENDED (shared 2-core box, recipes in parallel, 1 thread each); "
        "scale by reference GFLOP/s to compare machines.",
        "",
        "| recipe | views | crop | pool | batch | lr | user images | step s (median) | step s (p99) | ref GFLOP/s | "
        + " | ".join(f"loss @{b}" for b in budgets)
        + " |",
        "|" + "---|" * (10 + len(budgets)),
    ]
    for r in results:
        by = {c["step"]: c["heldout_loss"] for c in r["curve"]}
        cells = [
            r["recipe"],
            r["image_size"],
            r["crop"] or "-",
            r["pool"] or "fresh",
            r["batch"],
            r.get("lr", 1e-4),
            "yes" if r["user"] else "no",
            r["step_s_median"],
            r["step_s_p99"],
            f"{r['reference_gflops_before']}/{r['reference_gflops_after']}",
            *[by.get(b, "-") for b in budgets],
        ]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipes", default="published,cpu,rescaled,cpu+user")
    p.add_argument("--budgets", default="25,50,100,150", help="steps at which the held-out loss is measured")
    p.add_argument("--timing-steps", type=int, default=4, help="steps of the published recipe (timed only)")
    p.add_argument("--eval-views", type=int, default=16)
    p.add_argument("--eval-size", type=int, default=256)
    p.add_argument("--user-data", default="mvtec:/work/shared/devset/casting")
    p.add_argument("--user-task", default="impeller")
    p.add_argument("--user-n", type=int, default=32, help="seeded subset of the task's good training images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=4, help="recipes run in parallel")
    p.add_argument("--device", default="auto")
    p.add_argument("--out-dir", type=Path, default=Path("/tmp/ea-budget"))
    p.add_argument("--merge-only", action="store_true", help="only tabulate the recipes' JSON in --out-dir")
    p.add_argument("--one", help=argparse.SUPPRESS)  # child process: run this recipe, print its JSON
    args = p.parse_args(argv)
    if args.one:
        result = run_recipe(args.one, args)
        (args.out_dir / f"{args.one}.json").write_text(json.dumps(result, indent=1))
        return 0
    args.out_dir.mkdir(parents=True, exist_ok=True)
    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n not in RECIPES]
    if unknown:
        p.error(f"unknown recipes {unknown}; known: {list(RECIPES)}")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    base = [sys.executable, __file__, *(argv if argv is not None else sys.argv[1:])]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    pending, running = ([] if args.merge_only else list(names)), []
    while pending or running:
        while pending and len(running) < args.jobs:
            n = pending.pop(0)
            running.append(subprocess.Popen([*base, "--one", n], env=env))
        time.sleep(2)
        running = [q for q in running if q.poll() is None]
    results = [r for r in (_result(n, args.out_dir) for n in names) if r is not None]
    meta = {
        "started": started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "command": " ".join(["python", "benchmarks/efficientad_teacher_budget.py", *(argv or sys.argv[1:])]),
        "eval_views": args.eval_views,
        "eval_size": args.eval_size,
        "contended": True,
    }
    (args.out_dir / "budget.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    (args.out_dir / "budget.md").write_text(markdown(results, meta))
    print(markdown(results, meta))
    return 0 if len(results) == len(names) else 1


if __name__ == "__main__":
    sys.exit(main())
