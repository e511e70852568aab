"""Stand-in for `python -m linewatch.trainer|export|edge` in the refresh pipeline tests.

Honours the command-line contract from DESIGN.md (argument names, the
metrics.json shape `eval --out` writes, the bundle manifest) with no model at all,
so the pipeline's orchestration is tested with real subprocesses and real files.
The integrator's end-to-end test runs the same pipeline with the real tools.

Behaviour comes from the JSON file named by FAKE_TOOLS_PLAN:
    before / after: {task: image_auroc} reported by eval before / after the update
    fail: "train" | "eval" | "export" | "verify"   make that step fail
    hang: "train"                                   make training hang (for SIGTERM tests)
    base_version: int                               exported version = base + updates
    false_alarm_score: float                        what `edge verify --score` reports per image (0.1)
Every invocation is appended to FAKE_TOOLS_CALLS as a JSON line.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
from pathlib import Path

IMAGE_EXT = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def _plan() -> dict:
    return json.loads(Path(os.environ["FAKE_TOOLS_PLAN"]).read_text())


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _opts(args: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    for name in (
        "--run",
        "--data",
        "--tasks",
        "--out",
        "--sign-key",
        "--bundle",
        "--key",
        "--store",
        "--version",
    ):
        p.add_argument(name)
    p.add_argument("--score", nargs="+")
    p.add_argument("--bank-only", action="store_true")
    p.add_argument("--tensorrt", action="store_true")
    p.add_argument("--fp16", action="store_true")
    return p.parse_args(args)


def trainer(cmd: str, o: argparse.Namespace, plan: dict) -> int:
    run = Path(o.run)
    root = Path(o.data.split(":", 1)[1])
    tasks = o.tasks.split(",")
    state = json.loads((run / "state.json").read_text())
    if cmd == "update":
        print(f"fake trainer: update {run} with {tasks}")
        if plan.get("fail") == "train":
            (run / "state.json").write_text("{half-written")
            print("RuntimeError: CUDA out of memory", file=sys.stderr)
            return 1
        if plan.get("hang") == "train":
            print("training...", flush=True)
            time.sleep(120)
        seen = {}
        for task in tasks:
            good = root / task / "train" / "good"
            images = [p for p in good.iterdir() if p.suffix.lower() in IMAGE_EXT] if good.is_dir() else []
            if not images:
                print(f"DatasetError: {good} has no images", file=sys.stderr)
                return 2
            seen[task] = len(images)
        metrics = json.loads((run / "metrics.json").read_text())
        metrics["tasks"] += [t for t in tasks if t not in metrics["tasks"]]
        (run / "metrics.json").write_text(json.dumps(metrics))
        state["updates"] += 1
        state["seen"] = seen
        (run / "state.json").write_text(json.dumps(state))
        return 0
    if cmd == "eval":
        if plan.get("fail") == "eval":
            return 1
        values = plan.get("after" if state["updates"] else "before", {})
        row = [values.get(t, 0.99) for t in tasks]
        doc = {
            "method": "patchcore",
            "tasks": tasks,
            "matrix": {"image_auroc": [row]},
            "final": {"image_auroc": sum(v for v in row if v is not None) / len(row)},
        }
        Path(o.out).write_text(json.dumps(doc))
        print(f"fake trainer: eval {tasks} -> {row}")
        return 0
    return 64


def _manifests(folder: Path) -> list[dict]:
    out = []
    for p in sorted(folder.iterdir()) if folder.is_dir() else []:
        if p.name.startswith(".") or not (p / "manifest.json").is_file():
            continue
        out.append(json.loads((p / "manifest.json").read_text()))
    return out


def export(o: argparse.Namespace, plan: dict) -> int:
    """Like linewatch-export: versions above the store's, bank-only needs a full base there."""
    if plan.get("fail") == "export":
        print("onnx export failed", file=sys.stderr)
        return 1
    run, out = Path(o.run), Path(o.out)
    state = json.loads((run / "state.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    known = [m["model"]["version"] for m in _manifests(Path(o.store))] if o.store else []
    if o.version is not None:
        version = int(o.version)
        if known and version <= max(known):
            print(f"version {version} must be greater than {max(known)}", file=sys.stderr)
            return 1
    elif o.store:
        version = max(known, default=0) + 1
    else:
        version = plan.get("base_version", 10) + state["updates"]
    bank_only = None
    if o.bank_only:
        bases = [m for m in _manifests(Path(o.store or out.parent)) if not m.get("bank_only")]
        if not bases:
            print("bank-only refresh needs a base bundle; pass --base", file=sys.stderr)
            return 1
        base = max(bases, key=lambda m: m["model"]["version"])
        bank_only = {"base_version": base["model"]["version"], "graph_sha256": base["files"]["model.onnx"]}
    out.mkdir(parents=True)
    names = ["bank.npy"] if bank_only else ["model.onnx", "bank.npy"]
    for name in names:
        (out / name).write_bytes(os.urandom(3000))
    manifest = {
        "schema_version": 1,
        "model": {"name": "linewatch", "version": version},
        "tasks": metrics["tasks"],
        "method": metrics.get("method"),
        "metrics": {},
        "bank_only": bank_only,
        "files": {name: _sha(out / name) for name in names},
    }
    (out / "manifest.json").write_text(json.dumps(manifest))
    key = Path(o.sign_key).read_bytes()
    (out / "manifest.sig").write_text(
        hmac.new(key, (out / "manifest.json").read_bytes(), "sha256").hexdigest()
    )
    print(f"fake export: {out} version {version}{' (bank-only)' if bank_only else ''}")
    return 0


def edge_verify(o: argparse.Namespace, plan: dict) -> int:
    bundle = Path(o.bundle)
    if plan.get("fail") == "verify" or not Path(o.key).is_file():
        print("signature mismatch", file=sys.stderr)
        return 1
    manifest = json.loads((bundle / "manifest.json").read_text())
    for name, digest in manifest["files"].items():
        if _sha(bundle / name) != digest:
            print(f"{name}: hash mismatch", file=sys.stderr)
            return 1
    info = manifest.get("bank_only")
    if info:  # like edge.model.bundle: the base must be a published sibling of the bundle
        bases = [m for m in _manifests(bundle.parent) if m["model"]["version"] == info["base_version"]]
        if not bases or bases[0]["files"].get("model.onnx") != info["graph_sha256"]:
            print(f"refresh needs base bundle v{info['base_version']}; none found beside it", file=sys.stderr)
            return 3
    if o.score:  # as the real verify: each image's score by the bundle, into --out
        score = float(plan.get("false_alarm_score", 0.1))
        images = [
            {"file": f, "score": score, "anomalous": score >= 0.5} for f in o.score if Path(f).is_file()
        ]
        Path(o.out).write_text(json.dumps({"ok": True, "images": images}))
    print("bundle OK")
    return 0


def main() -> int:
    args = sys.argv[1:]
    assert args[0] == "-m", args
    assert args[1].startswith("linewatch."), args  # the installed namespace
    module, rest = args[1].removeprefix("linewatch."), args[2:]
    with open(os.environ["FAKE_TOOLS_CALLS"], "a") as fh:
        fh.write(json.dumps({"module": module, "args": rest}) + "\n")
    plan = _plan()
    if module == "trainer":
        return trainer(rest[0], _opts(rest[1:]), plan)
    if module == "export":
        return export(_opts(rest), plan)
    if module == "edge" and rest[0] == "verify":
        return edge_verify(_opts(rest[1:]), plan)
    return 64


if __name__ == "__main__":
    sys.exit(main())
