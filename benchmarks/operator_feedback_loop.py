"""The operator loop end to end on real images: flagged good parts marked on the page, then a refresh.

On the dev set's commutator images (``../shared/devset/kolektor/commutator``, real hairline cracks):

1. ``linewatch-train fit`` (PatchCore, CLI defaults: ``auto`` geometry) on a seeded subset of the
   training good images; a signed v1 bundle is exported into a store;
2. a real edge (``EdgeRuntime`` with the operator page, a real mosquitto) scores a stream of good
   "line" frames from a ``dir:`` camera;
3. every line frame it flags is marked "false alarm: part is good" by clicking the page's gallery
   button in headless Chromium (Debian's, through Selenium; plain HTTP POSTs with ``--no-browser``);
   the page writes them into the refresh drop folder;
4. ``linewatch-refresh run`` learns them (bank-only), its gate requires them to pass the new bundle,
   publishes, and the running edge confirms v2;
5. the false-alarm rate on held-out good frames (other physical parts: the dev set splits good
   images by part) and the share of defects caught are measured with v1 and v2 through
   ``linewatch-edge verify --score`` (the edge's own scoring path), as are the marked frames.

Usage::

    python benchmarks/operator_feedback_loop.py [--n-train 40 --n-line 32 --n-defect 20]

Writes ``benchmarks/results/operator_feedback_loop.json``. Without the dev set it writes the reason
and exits 0. Minutes on 2 CPU cores (fit, two evaluations, an update and two exports).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DEVSET = Path(os.environ.get("LINEWATCH_DEVSET", REPO.parent / "shared" / "devset"))
TASK_ROOT = DEVSET / "kolektor" / "commutator"
TASK = "commutator"
ROOT = "linewatch/loop/line/st/cam0"
TOKEN = "loop-token"
PY = sys.executable

from linewatch.deploy.localbroker import LocalBroker  # noqa: E402 - after the sys.path line above


def cli(*argv: str) -> str:
    t0 = time.perf_counter()
    proc = subprocess.run([PY, *argv], capture_output=True, text=True, cwd=REPO, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{argv[:3]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    print(f"  {' '.join(argv[1:3])}: {time.perf_counter() - t0:.0f}s", file=sys.stderr)
    return proc.stdout


def build_dataset(root: Path, n_train: int, n_line: int, n_defect: int) -> dict[str, list[Path]]:
    """The dataset the refresh job owns, plus the line stream; the dev set itself is never written."""
    train = sorted((TASK_ROOT / "train" / "good").glob("*.jpg"))[:n_train]
    good = sorted((TASK_ROOT / "test" / "good").glob("*.jpg"))  # consecutive 8 = one physical part
    line, held_out = good[:n_line], good[n_line:]
    defects = sorted((TASK_ROOT / "test" / "crack").glob("*.jpg"))[:n_defect]
    ds = root / "dataset" / TASK
    for sub, files in (("train/good", train), ("test/good", held_out), ("test/crack", defects)):
        (ds / sub).mkdir(parents=True, exist_ok=True)
        for f in files:
            shutil.copy(f, ds / sub / f.name)
    (ds / "ground_truth" / "crack").mkdir(parents=True)
    for f in defects:
        shutil.copy(
            TASK_ROOT / "ground_truth" / "crack" / f"{f.stem}_mask.png", ds / "ground_truth" / "crack"
        )
    return {"line": line, "held_out": [ds / "test/good" / f.name for f in held_out],
            "defects": [ds / "test/crack" / f.name for f in defects]}  # fmt: skip


def score(root: Path, files: list[Path], out: Path) -> list[dict[str, Any]]:
    cli("-m", "linewatch.edge", "verify", "--bundle", str(root / "store"), "--key", str(root / "keys" / "linewatch.pub"),
        "--score", *map(str, files), "--out", str(out))  # fmt: skip
    return json.loads(out.read_text())["images"]


def rate(entries: list[dict[str, Any]]) -> dict[str, Any]:
    flagged = sum(1 for e in entries if e.get("anomalous"))
    return {"n": len(entries), "anomalous": flagged, "rate": round(flagged / max(len(entries), 1), 4)}


def mark_in_browser(url: str, n: int, shots: Path) -> int:
    """Log in and click "false alarm" on every gallery frame; returns the clicks that were filed."""
    from selenium import webdriver
    from selenium.webdriver.common.by import By

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1200"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver") or "/usr/bin/chromedriver")
    browser = webdriver.Chrome(options=options, service=service)
    try:
        browser.get(url)
        browser.find_element(By.ID, "name").send_keys("loop-operator")
        browser.find_element(By.ID, "secret").send_keys(TOKEN)
        browser.find_element(By.ID, "login").click()
        deadline = time.monotonic() + 120
        while len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) < n:
            if time.monotonic() > deadline:
                raise RuntimeError("the gallery never showed every flagged frame")
            time.sleep(0.2)
        browser.save_screenshot(str(shots / "loop-before-marking.png"))
        filed = 0
        for button in browser.find_elements(By.CSS_SELECTOR, '#gallery button[data-kind="false_alarm"]'):
            before = browser.find_element(By.ID, "notice").text
            button.click()
            deadline = time.monotonic() + 30
            while browser.find_element(By.ID, "notice").text == before and time.monotonic() < deadline:
                time.sleep(0.05)
            filed += "filed false_alarm" in browser.find_element(By.ID, "notice").text
        browser.save_screenshot(str(shots / "loop-after-marking.png"))
        return filed
    finally:
        browser.quit()


def mark_over_http(url: str, gallery: list[dict[str, Any]]) -> int:
    import urllib.request

    filed = 0
    for s in gallery:
        req = urllib.request.Request(
            url + "/api/feedback",
            data=json.dumps({"kind": "false_alarm", "camera": s["camera"], "frame_id": s["frame_id"]}).encode(),
            headers={"Authorization": f"Bearer {TOKEN}", "X-Linewatch-User": "loop-operator",
                     "X-Linewatch-Feedback": "1", "Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(req, timeout=30) as r:
            filed += r.status == 200
    return filed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-train", type=int, default=40)
    p.add_argument("--n-line", type=int, default=32, help="good test frames streamed (4 physical parts)")
    p.add_argument("--n-defect", type=int, default=20)
    p.add_argument("--max-drop", type=float, default=0.05, help="the refresh gate's margin")
    p.add_argument("--no-browser", action="store_true", help="mark over HTTP instead of clicking in Chromium")
    p.add_argument("--work", type=Path, help="keep everything here (default: a temporary folder)")
    p.add_argument(
        "--out", type=Path, default=REPO / "benchmarks" / "results" / "operator_feedback_loop.json"
    )
    args = p.parse_args(argv)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    if not TASK_ROOT.is_dir():
        reason = f"the dev set's commutator images are not at {TASK_ROOT}"
        args.out.write_text(json.dumps({"skipped": reason}, indent=2) + "\n")
        print(f"skipped: {reason}")
        return 0
    root = args.work or Path(tempfile.mkdtemp(prefix="operator-loop-"))
    for name in ("drop", "review", "store", "frames", "shots"):
        (root / name).mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"task": f"kolektor/{TASK}", "work": str(root), "timings_s": {}}
    t = time.perf_counter()
    sets = build_dataset(root, args.n_train, args.n_line, args.n_defect)
    print("fit + export v1 ...", file=sys.stderr)
    cli("-m", "linewatch.trainer", "fit", "--data", f"mvtec:{root / 'dataset'}", "--tasks", TASK, "--method",
        "patchcore", "--out", str(root / "run"), "--no-progress", "--no-report")  # fmt: skip
    cli("-m", "linewatch.export", "keygen", "--out", str(root / "keys"))
    cli("-m", "linewatch.export", "--run", str(root / "run"), "--out", str(root / "first"), "--store",
        str(root / "store"), "--sign-key", str(root / "keys" / "linewatch.key"))  # fmt: skip
    from linewatch.deploy.refresh.publish import LocalStore

    LocalStore(root / "store").publish(root / "first")
    report["timings_s"]["fit_export"] = round(time.perf_counter() - t, 1)
    before = {"held_out_good": score(root, sets["held_out"], root / "v1-good.json"),
              "defects": score(root, sets["defects"], root / "v1-defects.json")}  # fmt: skip

    from linewatch.edge.config import load_config
    from linewatch.edge.runtime import EdgeRuntime

    with LocalBroker(root / "mosquitto") as broker:
        cfg = load_config(None, {
            "mqtt": {"url": broker.url}, "topic": {"template": "linewatch/loop/line/st/{camera}"},
            "metrics": {"port": 0, "host": "127.0.0.1"}, "outbox": {"path": str(root / "outbox.sqlite")},
            "reload": {"watch_interval_s": 0.3, "key": str(root / "keys" / "linewatch.pub"), "require_signature": True},
            "camera": {"dir_poll_s": 0.05}, "watchdog": {"enabled": False}, "logging": {"level": "WARNING"},
            "operator": {"token": TOKEN, "drop_dir": str(root / "drop"), "review_dir": str(root / "review"),
                         "audit_log": str(root / "audit.jsonl"), "gallery": 200, "feedback_per_minute": 1000,
                         "refresh_log": str(root / "refresh.jsonl")},
        })  # fmt: skip
        rt = EdgeRuntime(cfg, root / "store", [f"dir:{root / 'frames'}"])
        rt.start()
        try:
            for i, f in enumerate(sets["line"]):
                shutil.copy(f, root / "frames" / f".{i:05d}.jpg")
                os.rename(root / "frames" / f".{i:05d}.jpg", root / "frames" / f"{i:05d}.jpg")
            cam = rt.cameras[0]
            deadline = time.monotonic() + 900
            while cam.results < len(sets["line"]):
                if time.monotonic() > deadline:
                    raise RuntimeError("the edge did not score the line frames")
                time.sleep(0.2)
            assert rt.operator is not None
            gallery = rt.operator.state.snapshot()["gallery"]
            url = f"http://127.0.0.1:{rt.server.port}/operator"
            flagged = len(gallery)
            how = "http" if args.no_browser else "chromium"
            filed = (
                mark_over_http(url, gallery)
                if args.no_browser
                else mark_in_browser(url, flagged, root / "shots")
            )
            marked = sorted((root / "drop" / TASK / "train" / "good").glob("*.png")) if flagged else []
            report["line"] = {"frames": len(sets["line"]), "flagged_by_v1": flagged, "marked_via": how,
                              "filed": filed}  # fmt: skip
            (root / "refresh.toml").write_text(f"""run_dir = "{root / "run"}"
data = "mvtec:{root / "dataset"}"
drop_dir = "{root / "drop"}"
review_dir = "{root / "review"}"
sign_key = "{root / "keys" / "linewatch.key"}"
log_path = "{root / "refresh.jsonl"}"
lock_path = "{root / "refresh.lock"}"
python = "{PY}"
[store]
dir = "{root / "store"}"
[gate]
max_drop = {args.max_drop}
[mqtt]
url = "{broker.url}"
topic_root = ["{ROOT}"]
confirm_timeout_s = 300
[steps]
drop_settle_s = 0
""")
            marked_copies = []
            for f in marked:  # the drop moves into the dataset: keep a copy to score after
                shutil.copy(f, root / "shots" / f.name)
                marked_copies.append(root / "shots" / f.name)
            if marked:
                before["marked"] = score(root, marked_copies, root / "v1-marked.json")
            print("refresh ...", file=sys.stderr)
            t = time.perf_counter()
            proc = subprocess.run([PY, "-m", "linewatch.deploy.refresh", "run", "--config", str(root / "refresh.toml")],
                                  capture_output=True, text=True, cwd=REPO, check=False)  # fmt: skip
            report["timings_s"]["refresh"] = round(time.perf_counter() - t, 1)
            (root / "refresh.out").write_text(proc.stdout + proc.stderr)
            records = [json.loads(x) for x in (root / "refresh.jsonl").read_text().splitlines() if x.strip()]
            rec = records[-1] if records else {}
            report["refresh"] = {"exit_code": proc.returncode, "outcome": rec.get("outcome"),
                                 "versions": rec.get("versions"), "gate": rec.get("gate"),
                                 "metrics": rec.get("metrics"), "drop": rec.get("drop")}  # fmt: skip
            report["edge_model_after"] = rt.models.loaded.ref() if rt.models.loaded else None
            models = rt.operator.state.models()
            report["page_model_history"] = [
                {k: m[k] for k in ("version", "added", "bank_only", "gate")} for m in models
            ]
        finally:
            rt.shutdown()
    if report["refresh"]["outcome"] != "published":  # v1 still serves: there is no "after" to measure
        report["after_not_measured"] = f"the refresh ended {report['refresh']['outcome']!r}; v1 is still live"
        after: dict[str, Any] = {}
    else:
        after = {"held_out_good": score(root, sets["held_out"], root / "v2-good.json"),
                 "defects": score(root, sets["defects"], root / "v2-defects.json")}  # fmt: skip
        if marked:
            after["marked"] = score(root, marked_copies, root / "v2-marked.json")
    for key, name in (("held_out_good", "false_alarm_rate_held_out_good"), ("defects", "defects_caught"),
                      ("marked", "marked_frames_flagged")):  # fmt: skip
        if key in before:
            report[name] = {"before": rate(before[key]), "after": rate(after[key]) if key in after else None}
    report["scores"] = {"before": before, "after": after}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(
        json.dumps({k: v for k, v in report.items() if k not in ("scores", "page_model_history")}, indent=2)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
