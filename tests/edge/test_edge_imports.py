"""The box never imports torch, onnx or tensorrt at import time: the whole edge import graph is walked.

The edge installs without torch (DESIGN.md); onnx and tensorrt are optional there and imported only
inside the functions that need them. The check runs in a fresh interpreter: `edge.cli` (what
`linewatch-edge` loads) first, then every module under `edge/` and `contract/`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "tensorrt")

_WALK = """
import importlib, json, pkgutil, sys
import edge.cli
import contract, edge

names = ["edge.cli", "edge", "contract"]
for pkg in (edge, contract):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing __main__ would run the CLI
            importlib.import_module(info.name)
            names.append(info.name)
loaded = sorted(m for m in sys.modules if m.split(".")[0] in %r)
print(json.dumps({"walked": names, "forbidden": loaded}))
"""


def test_the_whole_edge_import_graph_is_free_of_torch_onnx_and_tensorrt() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _WALK % (FORBIDDEN,)], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    walked = set(report["walked"])
    expected = {
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".") for p in REPO.glob("edge/**/*.py")
    }
    expected |= {
        p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".") for p in REPO.glob("contract/*.py")
    }
    expected = {n.removesuffix(".__init__") for n in expected if not n.endswith("__main__")}
    assert expected <= walked, f"not imported: {sorted(expected - walked)}"
    assert report["forbidden"] == [], f"the edge imported {report['forbidden']}"
