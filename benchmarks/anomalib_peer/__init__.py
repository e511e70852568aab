"""anomalib 2.7 as a side-by-side peer for the real-image benchmark, run in a venv of its own.

Why its own venv: anomalib is something we compare against, never a dependency of Linewatch. It pins
lightning, torchmetrics, jsonargparse, kornia, ... which must not leak into the project venv, the
product or its tests. So the benchmark (project venv: torch, no anomalib) builds a peer venv once and
runs ``run_peer.py`` there as a subprocess; only an npz file crosses back. The peer venv borrows the
project venv's torch (symlinked, see ``venv.py``) instead of installing a second 5.5 GB CUDA build.

    from anomalib_peer import ensure_peer_venv, run_peer   # or benchmarks.anomalib_peer

    python = ensure_peer_venv()                 # idempotent; ~1 min the first time
    res = run_peer(python, "../shared/devset", "bsdata/ball_screw", "patchcore", "lite0", "out/pc.npz")
    if "error" not in res:
        roc_auc_score(res["labels"], res["scores"])

``run_peer`` returns ``paths`` (relative to the task folder, sorted like ``sorted(glob("test/*/*"))``),
``labels`` (0 good, 1 defect), ``scores`` (raw float32 image scores), ``maps`` (float16 N x h x w raw
anomaly maps at anomalib's output size) and ``info`` (dict: anomalib version, backbone, layers, image
size, coreset ratio or n_features, fit seconds, predict ms median/p99, peak RSS MB, train images...).
On failure it returns ``{"error", "returncode", "stderr_tail"}``; ``error`` is "not available offline"
when the requested weights (anomalib's own default backbone) cannot be had without the model hub.

Weights: ``lite0`` (Linewatch's Lite0 ImageNet weights, levels and normalisation; anomalib's other
defaults), ``lite0-defaults`` (same weights, anomalib's defaults otherwise), ``default`` (anomalib's
own backbone; needs hub weights). See ``run_peer.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from .venv import DEFAULT_VENV, ensure_venv

RUN_PEER = Path(__file__).resolve().with_name("run_peer.py")
EXIT_WEIGHTS_UNAVAILABLE = 3  # run_peer.py's exit code when the weights need the model hub
__all__ = ["DEFAULT_VENV", "ensure_peer_venv", "run_peer"]


def ensure_peer_venv(path: str | Path = DEFAULT_VENV, torch_site: str | Path | None = None) -> Path:
    """Create (once) the anomalib venv at ``path`` and return its python executable."""
    return ensure_venv(Path(path), Path(torch_site) if torch_site else None)


def run_peer(
    python: str | Path,
    devset: str | Path,
    task: str,
    model: str,
    weights: str,
    out: str | Path,
    timeout: float = 3600,
    image_size: int | tuple[int, int] | None = None,
    max_train: int | None = None,
) -> dict:
    """Train anomalib ``model`` on ``devset/task`` train/good, score its test images; return the npz."""
    cmd = [str(python), str(RUN_PEER), "--devset", str(devset), "--task", task]
    cmd += ["--model", model, "--weights", weights, "--out", str(out)]
    if image_size:
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        cmd += ["--image-size", f"{size[0]},{size[1]}"]
    if max_train:
        cmd += ["--max-train", str(max_train)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONNOUSERSITE": "1"}
    env.pop("PYTHONPATH", None)  # the project's paths must not shadow the peer venv's packages
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired as exc:
        tail = (exc.stderr or b"")[-3000:]
        tail = tail.decode(errors="replace") if isinstance(tail, bytes) else tail
        return {"error": f"timed out after {timeout:.0f} s", "returncode": None, "stderr_tail": tail}
    if proc.returncode != 0:
        offline = proc.returncode == EXIT_WEIGHTS_UNAVAILABLE
        error = "not available offline" if offline else f"run_peer.py exited {proc.returncode}"
        return {"error": error, "returncode": proc.returncode, "stderr_tail": proc.stderr[-3000:]}
    import numpy as np  # the project venv has numpy; imported late so the module imports light

    with np.load(out, allow_pickle=False) as npz:
        res = {k: npz[k] for k in ("paths", "labels", "scores", "maps")}
        res["info"] = json.loads(str(npz["info"]))
    return res
