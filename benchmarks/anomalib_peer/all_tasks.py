"""Run the anomalib peer on every dev-set task x model x weights and print image AUROC per run.

Why: proof that the peer works end to end through its Python API (the same calls the real-image
benchmark makes), and a first look at the numbers. Runs in the PROJECT venv (sklearn for AUROC).
Finished npz files are kept and reused (``--force`` re-runs), so an interrupted sweep resumes.

Cost on 2 shared CPU cores: anomalib's PatchCore coreset (k-center greedy on a ~285-d JL projection)
grows with the square of the train images: 40 images took ~270 s, 100 images >20 min. So PatchCore
was run with ``--max-train 40`` (evenly spaced over the sorted train/good) and PaDiM on all of it.

    python -m benchmarks.anomalib_peer.all_tasks [--max-train N] [--weights lite0 lite0-defaults default]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from . import ensure_peer_venv, run_peer

ROOT = Path(__file__).resolve().parents[2]
TASKS = ["bsdata/ball_screw", "kolektor/commutator", "casting/impeller"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devset", type=Path, default=ROOT.parent / "shared" / "devset")
    ap.add_argument("--out-dir", type=Path, default=ROOT / "benchmarks" / "results" / "anomalib_peer")
    ap.add_argument("--tasks", nargs="+", default=TASKS)
    ap.add_argument("--models", nargs="+", default=["patchcore", "padim"])
    ap.add_argument("--weights", nargs="+", default=["lite0", "lite0-defaults", "default"])
    ap.add_argument("--max-train", type=int, default=None)
    ap.add_argument("--timeout", type=float, default=3600)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()

    python = ensure_peer_venv()
    rows = []
    for task in args.tasks:
        for model in args.models:
            for weights in args.weights:
                out = args.out_dir / f"{task.replace('/', '__')}__{model}__{weights}.npz"
                if out.exists() and not args.force:
                    with np.load(out, allow_pickle=False) as z:
                        res = {
                            "labels": z["labels"],
                            "scores": z["scores"],
                            "info": json.loads(str(z["info"])),
                        }
                else:
                    res = run_peer(
                        python, args.devset, task, model, weights, out, args.timeout, None, args.max_train
                    )
                if "error" in res:
                    rows.append((task, model, weights, res["error"], "", "", "", ""))
                    print(
                        f"{task} {model} {weights}: {res['error']}\n{res['stderr_tail'][-600:]}", flush=True
                    )
                    continue
                info = res["info"]
                auroc = roc_auc_score(res["labels"], res["scores"])
                n_train = f"{info['n_train']}/{info['n_train_available']}"
                ms = f"{info['predict_ms_median']:.0f}/{info['predict_ms_p99']:.0f}"
                rows.append(
                    (
                        task,
                        model,
                        weights,
                        f"{auroc:.3f}",
                        f"{info['fit_s']:.0f}",
                        ms,
                        n_train,
                        info["layers"],
                    )
                )
                print(rows[-1], flush=True)
    print("| task | model | weights | image AUROC | fit s | predict ms med/p99 | train | layers |")
    print("|---|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


if __name__ == "__main__":
    main()
