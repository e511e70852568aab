"""Few-shot onboarding on the real dev set: image AUROC at K support images, and onboard -> first verdict.

What runs (each part its own invocation, each well under 15 minutes on this 2-core box):

- ``--part extractor``: SimSiam fine-tuning of Lite0 (``trainer/simsiam.py``) on the GENERATED
  textures of ``trainer.data.generate`` (7 categories), so the extractor never sees the dev set;
  ``--extractor-data devset`` trains ``simsiam-devset`` on the dev tasks' own train/good images
  instead (no test image; an upper bound, since an onboarded part is normally new to the extractor).
- ``--part eval --extractor imagenet|simsiam|simsiam-devset``: a base few-shot bundle (3 slots x 1000 patches,
  256-px resize, signed by a release key) is exported once; then for every seed and K, the three dev
  tasks are onboarded one after the other into a copy of its store with the box's own code
  (``edge/onboard``: augmentation, onnxruntime embedding, numpy coreset, leave-one-out threshold,
  box-signed bank-only version), and a fixed subsample of each task's test images is scored by the
  edge's onnxruntime backend with all three tasks on board (task inference active). Support images
  are drawn (seeded) from train/good only; nothing is chosen on the test split: every setting is
  the method's default, fixed before the dev set was read. Reported per task and K: image AUROC
  (mean, std, min, max over seeds), task-inference accuracy, the share of good test images flagged
  and of defects caught at the box's calibrated threshold, and the wall time from the ``onboard``
  call to the first verdict of the new version (onboard + open/verify + golden check on the
  backend + one frame), single-threaded.
- ``--part full``: full-data PatchCore (trainer, 256-px resize, each task alone on all its
  train/good images, default budget) on the same test subsample, for reference.

Results are merged into ``--out`` (default ``benchmarks/results/fewshot_onboarding.json``).

    nice -n 10 python benchmarks/fewshot_onboarding.py --part extractor
    nice -n 10 python benchmarks/fewshot_onboarding.py --part eval --extractor imagenet
    nice -n 10 python benchmarks/fewshot_onboarding.py --part eval --extractor simsiam
    nice -n 10 python benchmarks/fewshot_onboarding.py --part full
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEVSET = ROOT.parent / "shared" / "devset"
SEQUENCE = [("bsdata", "ball_screw"), ("kolektor", "commutator"), ("casting", "impeller")]
HW = (256, 256)
GENERATED = ["brick", "camera", "coffee", "cell", "grass", "gravel", "moon"]


def _test_subsample(devset: Path, per_class: int) -> dict[str, tuple[list[Path], np.ndarray]]:
    """A fixed (seed 0) subsample of each task's test split: `per_class` good and defective images."""
    from linewatch.trainer.data import load_task

    out = {}
    rng = np.random.default_rng(0)
    for root, task in SEQUENCE:
        split = load_task(f"mvtec:{devset / root}", task)
        good = [s.path for s in split.test if s.label == 0]
        bad = [s.path for s in split.test if s.label == 1]
        picks = [good[i] for i in rng.permutation(len(good))[:per_class]]
        picks += [bad[i] for i in rng.permutation(len(bad))[:per_class]]
        labels = np.array([0] * min(per_class, len(good)) + [1] * min(per_class, len(bad)))
        out[task] = (picks, labels)
    return out


def _train_good(devset: Path, root: str, task: str) -> list[Path]:
    from linewatch.trainer.data import load_task

    return [s.path for s in load_task(f"mvtec:{devset / root}", task).train]


def part_extractor(work: Path, steps: int, batch: int, source: str, devset: Path) -> dict[str, Any]:
    """`generated`: textures the dev set never shows (the onboarding case: the part is new to the
    extractor). `devset`: the dev tasks' own train/good images aggregated (no test image), an upper
    bound for parts of the kind the extractor was trained on."""
    from linewatch.trainer.data import read_images
    from linewatch.trainer.data.generate import generate_dataset
    from linewatch.trainer.simsiam import SimSiamConfig, train_extractor, train_simsiam

    cfg = SimSiamConfig(image_size=HW, steps=steps, batch=batch)
    if source == "devset":
        frames, trained_on = [], {}
        for root, task in SEQUENCE:
            paths = _train_good(devset, root, task)
            frames.append(read_images(paths, HW))
            trained_on[task] = {"data": f"mvtec:{devset / root}", "train_good": len(paths)}
        record = train_simsiam(np.concatenate(frames), cfg, work / "simsiam-devset.pt", trained_on)
        return {"record": record}
    data = work / "generated"
    if not data.exists():
        generate_dataset(data, GENERATED, n_train=24, n_test_good=1, n_test_defect=1, size=HW[0], seed=0)
    record = train_extractor(f"mvtec:{data}", GENERATED, work / "simsiam.pt", cfg)
    return {"record": record}


def _base_store(work: Path, extractor: str) -> tuple[Path, Any]:
    """The release-signed base few-shot bundle (no task yet) in a store, exported once per extractor."""
    from linewatch.contract.store import point_current
    from linewatch.edge.model.signing import generate_keypair
    from linewatch.edge.onboard.builder import Policy

    keys = work / "keys"
    if not keys.exists():
        for n in ("release", "box"):
            generate_keypair(keys / n)
    policy = Policy(
        release_key=keys / "release" / "linewatch.pub",
        box_keys=[keys / "box" / "linewatch.pub"],
        require_signature=True,
        sign_key=keys / "box" / "linewatch.key",
        threads=1,
    )
    store = work / f"base-{extractor}"
    if (store / "current").exists():
        return store, policy
    from linewatch.export.bundle_writer import BundleInfo, write_bundle
    from linewatch.export.run_source import synthetic_golden
    from linewatch.trainer.methods.registry import build_method

    weights = work / f"{extractor}.pt" if extractor != "imagenet" else None
    if weights is not None and not weights.is_file():
        raise SystemExit(f"{weights} missing: run --part extractor first")
    method = build_method(
        "fewshot", image_size=HW, backbone_weights=weights, progress=False, slots=3, bank_per_task=1000
    )
    graph = method.scoring_graph()
    info = BundleInfo(name="fs", method="fewshot", strategy="cl", backbone=method.common.backbone, tasks=[],
                      calibration=graph.calibration, golden_source="synthetic")  # fmt: skip
    write_bundle(graph, store / "fs-v000001", info=info, golden_inputs=synthetic_golden(HW), max_batch=4,
                 sign_key=keys / "release" / "linewatch.key", store=store)  # fmt: skip
    point_current(store, "fs-v000001")
    return store, policy


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, np.float64)
    return {"mean": round(float(a.mean()), 4), "std": round(float(a.std()), 4),
            "min": round(float(a.min()), 4), "max": round(float(a.max()), 4), "n": len(a)}  # fmt: skip


def part_eval(
    devset: Path, work: Path, extractor: str, ks: list[int], seeds: int, per_class: int
) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from linewatch.contract.geometry import Geometry
    from linewatch.contract.store import store_target
    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends import select_backend
    from linewatch.edge.onboard.builder import onboard
    from linewatch.edge.onboard.support import model_inputs, read_files

    base, policy = _base_store(work, extractor)
    geometry = Geometry(mode="resize", tile_hw=HW)
    tests = _test_subsample(devset, per_class)
    test_frames = {t: model_inputs(_read_rgb(p), geometry) for t, (p, _) in tests.items()}
    task_names = [t for _, t in SEQUENCE]
    runs: list[dict[str, Any]] = []
    for seed in range(seeds):
        for k in ks:
            store = work / f"store-{extractor}"
            shutil.rmtree(store, ignore_errors=True)
            shutil.copytree(base, store, symlinks=True)
            timings, backend = {}, None
            for root, task in SEQUENCE:
                pool = _train_good(devset, root, task)
                picks = [pool[i] for i in np.random.default_rng(1000 * seed + k).permutation(len(pool))[:k]]
                t0 = time.perf_counter()
                done = onboard(store, task, read_files(picks), policy, seed)
                bundle = policy.open(store_target(store))
                if backend is not None:
                    backend.close()
                backend = select_backend(bundle, BackendConfig(threads=1), ["ort-cpu"]).backend
                backend.infer(test_frames[task][:1])
                timings[task] = {"onboard_to_first_verdict_s": round(time.perf_counter() - t0, 2),
                                 "onboard_s": round(done.seconds, 2), **done.details["timing"]}  # fmt: skip
            assert backend is not None
            row: dict[str, Any] = {"seed": seed, "k": k, "timings": timings, "tasks": {}}
            for j, task in enumerate(task_names):
                frames, labels = test_frames[task], tests[task][1]
                scores, tasks = [], []
                for i in range(0, len(frames), 4):
                    _, s, t = backend.infer(frames[i : i + 4])
                    scores.append(s)
                    tasks.append(t)
                s, t = np.concatenate(scores), np.concatenate(tasks)
                row["tasks"][task] = {
                    "image_auroc": float(roc_auc_score(labels, s)),
                    "task_accuracy": float(np.mean(t == j)),
                    "good_flagged": float(np.mean(s[labels == 0] > 0.5)),
                    "defects_caught": float(np.mean(s[labels == 1] > 0.5)),
                }
            backend.close()
            runs.append(row)
            print(f"[{extractor}] seed {seed} K={k}: " + ", ".join(
                f"{t} {row['tasks'][t]['image_auroc']:.3f}" for t in task_names), flush=True)  # fmt: skip
    summary: dict[str, Any] = {}
    for task in task_names:
        summary[task] = {}
        for k in ks:
            rows = [r for r in runs if r["k"] == k]
            summary[task][f"K={k}"] = {
                m: _stats([r["tasks"][task][m] for r in rows])
                for m in ("image_auroc", "task_accuracy", "good_flagged", "defects_caught")
            } | {
                "onboard_to_first_verdict_s": _stats(
                    [r["timings"][task]["onboard_to_first_verdict_s"] for r in rows]
                )
            }
    return {"summary": summary, "runs": runs, "test_per_class": per_class, "seeds": seeds, "ks": ks}


def _read_rgb(paths: list[Path]) -> list[np.ndarray]:
    import cv2

    from linewatch.contract.frames import decode_file

    return [cv2.cvtColor(decode_file(p), cv2.COLOR_BGR2RGB) for p in paths]


def part_full(devset: Path, per_class: int) -> dict[str, Any]:
    from sklearn.metrics import roc_auc_score

    from linewatch.contract.geometry import Geometry
    from linewatch.edge.onboard.support import model_inputs
    from linewatch.trainer.data import read_images
    from linewatch.trainer.methods.registry import build_method

    tests = _test_subsample(devset, per_class)
    out = {}
    for root, task in SEQUENCE:
        t0 = time.perf_counter()
        method = build_method("patchcore", image_size=HW, progress=False)
        method.fit_task(task, read_images(_train_good(devset, root, task), HW))
        frames = model_inputs(_read_rgb(tests[task][0]), Geometry(mode="resize", tile_hw=HW))
        raw = method.raw_scores(frames, 0)
        out[task] = {"image_auroc": float(roc_auc_score(tests[task][1], raw)),
                     "train_images": len(_train_good(devset, root, task)),
                     "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
        print(f"[full] {task}: {out[task]}", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", required=True, choices=["extractor", "eval", "full"])
    ap.add_argument("--extractor", choices=["imagenet", "simsiam", "simsiam-devset"], default="imagenet")
    ap.add_argument("--extractor-data", choices=["generated", "devset"], default="generated")
    ap.add_argument("--devset", type=Path, default=DEVSET)
    ap.add_argument("--work", type=Path, default=Path("/tmp/lw-fewshot-bench"))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "fewshot_onboarding.json")
    ap.add_argument("--ks", default="2,4,8")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--test-per-class", type=int, default=20, help="test images per class per task")
    ap.add_argument("--steps", type=int, default=150, help="SimSiam steps (--part extractor)")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    if (args.part != "extractor" or args.extractor_data == "devset") and not args.devset.is_dir():
        print(f"SKIPPED: dev set not found at {args.devset} (see its README); nothing measured")
        return 0
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.part == "extractor":
        key = "extractor" if args.extractor_data == "generated" else "extractor_devset"
        result = part_extractor(args.work, args.steps, args.batch, args.extractor_data, args.devset)
    elif args.part == "eval":
        ks = [int(k) for k in args.ks.split(",")]
        key = f"eval_{args.extractor}"
        result = part_eval(args.devset, args.work, args.extractor, ks, args.seeds, args.test_per_class)
    else:
        key, result = "full_patchcore", part_full(args.devset, args.test_per_class)
    result["wall_s"] = round(time.perf_counter() - t0, 1)
    result["command"] = " ".join(["python", "benchmarks/fewshot_onboarding.py", *(argv or sys.argv[1:])])
    doc = json.loads(args.out.read_text()) if args.out.is_file() else {}
    doc[key] = result
    doc["machine"] = {"cpus": os.cpu_count(), "threads": 1}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"{key} written to {args.out} ({result['wall_s']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
