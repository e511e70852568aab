"""The box never imports torch, onnx or tensorrt at import time: the whole edge import graph is walked.

The edge installs without torch (DESIGN.md); onnx and tensorrt are optional there and imported only
inside the functions that need them. The check runs in a fresh interpreter: `linewatch.edge.cli`
(what `linewatch-edge` loads) first, then every module under `edge/` and `contract/`, as installed
(`linewatch.edge.*`, `linewatch.contract.*`). It runs from the repo root, where the folders are also
importable as top-level `edge`, `contract`, ...: nothing may load them under those names (a second
copy of every module, with its own classes and globals).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "onnx", "tensorrt")
FOLDERS = ("contract", "deploy", "edge", "export", "trainer")

_WALK = """
import importlib, json, pkgutil, sys
import linewatch.edge.cli
import linewatch.contract, linewatch.edge

names = ["linewatch.edge.cli", "linewatch.edge", "linewatch.contract"]
for pkg in (linewatch.edge, linewatch.contract):
    for info in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
        if info.name.rsplit(".", 1)[-1] != "__main__":  # importing __main__ would run the CLI
            importlib.import_module(info.name)
            names.append(info.name)
print(json.dumps({
    "walked": names,
    "forbidden": sorted(m for m in sys.modules if m.split(".")[0] in %r),
    "top_level_copies": sorted(m for m in sys.modules if m.split(".")[0] in %r),
}))
"""


def test_the_whole_edge_import_graph_is_free_of_torch_onnx_and_tensorrt() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", _WALK % (FORBIDDEN, FOLDERS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    walked = set(report["walked"])
    expected = {
        "linewatch." + p.relative_to(REPO).with_suffix("").as_posix().replace("/", ".")
        for pattern in ("edge/**/*.py", "contract/*.py")
        for p in REPO.glob(pattern)
    }
    expected = {n.removesuffix(".__init__") for n in expected if not n.endswith("__main__")}
    assert len(expected) > 30, sorted(expected)  # the glob found the edge: the walk is checked against it
    assert expected <= walked, f"not imported: {sorted(expected - walked)}"
    assert report["forbidden"] == [], f"the edge imported {report['forbidden']}"
    assert report["top_level_copies"] == [], (
        f"second copies under top-level names: {report['top_level_copies']}"
    )
