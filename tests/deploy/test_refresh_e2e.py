"""The refresh end to end with the real parts: trainer, exporter, `edge verify`, a running edge.

One small line is set up per module (64 px generated parts, a PatchCore-CL run on brick and
moon, a signed v1 bundle in a store, a real mosquitto and a real `linewatch-edge run` on a
`dir:` camera), then the scenarios run on it in file order, each starting from where the
previous one left the store:

  (a) a new product passes the gate, is exported, verified, published and confirmed (v2);
  (b) a new product that misses its floor (its "defects" are copies of its good parts) is
      refused: the old bundle keeps serving, the dataset, run and drop are as they were;
  (c) rollback to v1 (the edge serves it) and forward again to v2;
  (d) more good images of a known product: a bank-only bundle on top of v2 (v3), which the
      edge loads and serves.

Every refresh runs `python -m linewatch.deploy.refresh run` as a subprocess, as the timer does.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from linewatch.deploy.localbroker import MOSQUITTO

pytestmark = pytest.mark.slow

SIZE = 64
KNOWN = ["brick", "moon"]
NEW = "camera"
ROOT = "linewatch/e2e/line/st/cam0"
PY = sys.executable
# (a) runs the gate's default baseline (re-evaluate the live run); the others take the run's own
# metrics.json, one evaluation less on 2 cores.
FROM_RUN = {"LINEWATCH_REFRESH_GATE__BASELINE": "run"}


@dataclass
class Line:
    """Everything the scenarios share."""

    root: Path
    port: int
    config: Path
    edge: subprocess.Popen
    statuses: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    frames_written: int = 0

    # -- paths
    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def drop(self) -> Path:
        return self.root / "drop"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    # -- helpers
    def current(self) -> str:
        return os.readlink(self.store / "current")

    def published(self) -> list[str]:
        return sorted(
            p.name for p in self.store.iterdir() if not p.name.startswith(".") and p.name != "current"
        )

    def status_version(self) -> int | None:
        with self.lock:
            doc = self.statuses[-1] if self.statuses else {}
        return (doc.get("model") or {}).get("version") if doc.get("state") == "online" else None

    def wait_status(self, version: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.status_version() != version:
            assert self.edge.poll() is None, f"the edge exited with {self.edge.returncode}: {self.edge_log()}"
            assert time.monotonic() < deadline, f"edge did not report v{version}: {self.statuses[-3:]}"
            time.sleep(0.1)

    def refresh(self, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
        proc = subprocess.run(
            [PY, "-m", "linewatch.deploy.refresh", *args, "--config", str(self.config)],
            capture_output=True,
            text=True,
            timeout=400,
            env={**os.environ, **(env or {})},
        )
        return proc.returncode, proc.stdout + proc.stderr

    def records(self) -> list[dict[str, Any]]:
        path = self.root / "refresh.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def score_one(self, image: Path) -> dict[str, Any]:
        """Put one frame in the camera folder; return the edge's verdict on it."""
        self.frames_written += 1
        name = f"{self.frames_written:05d}.png"
        shutil.copy(image, self.root / "frames" / f".{name}")
        os.rename(self.root / "frames" / f".{name}", self.root / "frames" / name)
        deadline = time.monotonic() + 60
        while True:
            with self.lock:
                found = [r for r in self.results if (r.get("source") or {}).get("file") == name]
            if found:
                return found[0]
            assert time.monotonic() < deadline, f"no verdict for {name}: {self.edge_log()}"
            time.sleep(0.05)

    def score_after_swap(self, image: Path) -> dict[str, Any]:
        """The verdict on `image` once the edge runs the model its status reports.

        The edge's inference thread takes the live model *before* it waits for frames
        (edge/frame_path.py, InferenceWorker._run), so on an idle line the first frame after
        a swap is still scored by the previous model. Prime with one frame first.
        """
        self.score_one(image)
        return self.score_one(image)

    def edge_log(self) -> str:
        return (self.root / "edge.log").read_text(errors="replace")[-3000:]

    def state(self) -> dict[str, Any]:
        """What a refused or failed refresh must leave as it was."""
        return {
            "current": self.current(),
            "published": self.published(),
            "metrics": (self.run_dir / "metrics.json").read_text(),
            "dataset": sorted(str(p.relative_to(self.dataset)) for p in self.dataset.rglob("*")),
        }


def _cli(*argv: str, cwd: Path | None = None) -> str:
    proc = subprocess.run([PY, *argv], capture_output=True, text=True, timeout=600, cwd=cwd)
    assert proc.returncode == 0, f"{argv} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def _subscribe(line: Line) -> Any:
    import paho.mqtt.client as mqtt

    ready = threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"e2e-{os.urandom(3).hex()}")

    def on_connect(c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if not reason.is_failure:
            c.subscribe([(f"{ROOT}/status", 1), (f"{ROOT}/result", 1)])
            ready.set()

    def on_message(_c: Any, _u: Any, msg: Any) -> None:
        doc = json.loads(msg.payload)
        with line.lock:
            (line.statuses if msg.topic.endswith("/status") else line.results).append(doc)

    client.on_connect, client.on_message = on_connect, on_message
    client.connect("127.0.0.1", line.port)
    client.loop_start()
    assert ready.wait(15), "could not subscribe"
    return client


@pytest.fixture(scope="module")
def line(tmp_path_factory: pytest.TempPathFactory, broker_port: int) -> Iterator[Line]:
    from linewatch.deploy.refresh.publish import LocalStore
    from linewatch.trainer.data.generate import generate_dataset

    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed")
    root = tmp_path_factory.mktemp("refresh-e2e")
    for name in ("dataset", "drop", "store", "frames", "incoming"):
        (root / name).mkdir()
    sizes = {"n_train": 12, "n_test_good": 6, "n_test_defect": 6, "size": SIZE, "seed": 0}
    generate_dataset(root / "dataset", KNOWN, **sizes)
    generate_dataset(root / "incoming", [NEW, "gravel"], **sizes)
    (root / "train.toml").write_text("[patchcore]\nbudget = 400\n")
    _cli(
        "-m", "linewatch.trainer", "fit", "--data", f"mvtec:{root / 'dataset'}", "--tasks", ",".join(KNOWN),
        "--method", "patchcore", "--strategy", "cl", "--out", str(root / "run"), "--config",
        str(root / "train.toml"), "--image-size", str(SIZE), "--no-progress", "--no-report",
    )  # fmt: skip
    _cli("-m", "linewatch.export", "keygen", "--out", str(root / "keys"))
    _cli(
        "-m", "linewatch.export", "--run", str(root / "run"), "--out", str(root / "first"),
        "--store", str(root / "store"), "--sign-key", str(root / "keys" / "linewatch.key"),
    )  # fmt: skip
    LocalStore(root / "store").publish(root / "first")
    (root / "edge.toml").write_text(
        f"""[topic]
template = "linewatch/e2e/line/st/{{camera}}"
[outbox]
path = "{root / "outbox.sqlite"}"
[metrics]
port = 0
host = "127.0.0.1"
[reload]
watch_interval_s = 0.3
key = "{root / "keys" / "linewatch.pub"}"
require_signature = true
[camera]
dir_poll_s = 0.05
[watchdog]
enabled = false
"""
    )
    config = root / "refresh.toml"
    config.write_text(
        f"""run_dir = "{root / "run"}"
data = "mvtec:{root / "dataset"}"
drop_dir = "{root / "drop"}"
sign_key = "{root / "keys" / "linewatch.key"}"
log_path = "{root / "refresh.jsonl"}"
lock_path = "{root / "refresh.lock"}"
python = "{PY}"
[store]
dir = "{root / "store"}"
[gate]
max_drop = 0.25
new_task_floor = 0.6
baseline = "eval"
[mqtt]
url = "mqtt://127.0.0.1:{broker_port}"
topic_root = ["{ROOT}"]
confirm_timeout_s = 90
[steps]
drop_settle_s = 0
"""
    )
    with open(root / "edge.log", "wb") as log:
        edge = subprocess.Popen(
            [
                PY, "-m", "linewatch.edge", "run", "--bundle", str(root / "store"), "--source", f"dir:{root / 'frames'}",
                "--mqtt", f"mqtt://127.0.0.1:{broker_port}", "--config", str(root / "edge.toml"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    line = Line(root, broker_port, config, edge)
    client = _subscribe(line)
    try:
        line.wait_status(1, timeout=120)
        yield line
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(edge.pid, signal.SIGTERM)
        try:
            edge.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(edge.pid, signal.SIGKILL)
            edge.wait(10)
        client.loop_stop()
        client.disconnect()


def test_a_new_product_passes_the_gate_and_goes_live(line: Line) -> None:
    shutil.move(str(line.root / "incoming" / NEW), str(line.drop / NEW))
    code, out = line.refresh("run")
    assert code == 0, out
    record = line.records()[-1]
    assert record["outcome"] == "published", record
    assert record["versions"] == {"before": 1, "after": 2, "live": 2}
    assert record["drop"]["export"] == "full"
    assert record["gate"]["passed"] is True
    assert set(record["metrics"]["after"]) == {*KNOWN, NEW}
    assert record["confirm"]["ok"] is True
    assert line.current() == "patchcore-v000002"
    assert line.status_version() == 2
    # the run learned the product, the dataset holds it, the drop is empty
    assert json.loads((line.run_dir / "metrics.json").read_text())["tasks"] == [*KNOWN, NEW]
    assert (line.dataset / NEW / "train" / "good").is_dir()
    assert not any(line.drop.iterdir())
    # the running edge scores the new product with the new bundle
    defect = sorted((line.dataset / NEW / "test").glob("[!g]*/*.png"))[0]
    verdict = line.score_after_swap(defect)
    assert verdict["model"]["version"] == 2
    assert verdict["task_name"] == NEW
    # nothing left behind
    assert not list(line.root.glob(".run.refresh-*"))
    assert not [p for p in line.store.iterdir() if p.name.startswith((".export-", ".incoming-"))]


def test_b_a_product_below_its_floor_is_refused_and_v2_keeps_serving(line: Line) -> None:
    # A new product whose "defects" are copies of its good parts: nothing to detect, so its
    # image AUROC is at chance level, far below the floor.
    ghost = line.root / "incoming" / "gravel"
    shutil.rmtree(ghost / "ground_truth")
    goods = sorted((ghost / "test" / "good").glob("*.png"))
    for folder in [d for d in (ghost / "test").iterdir() if d.name != "good"]:
        shutil.rmtree(folder)
    (ghost / "test" / "crack").mkdir()
    for i, good in enumerate(goods):
        shutil.copy(good, ghost / "test" / "crack" / f"{i:03d}.png")
    drop_files = sorted(str(p.relative_to(ghost)) for p in ghost.rglob("*") if p.is_file())
    shutil.move(str(ghost), str(line.drop / "gravel"))
    before = line.state()

    code, out = line.refresh("run", env={"LINEWATCH_REFRESH_GATE__NEW_TASK_FLOOR": "0.95", **FROM_RUN})
    assert code == 3, out  # Exit.REFUSED
    record = line.records()[-1]
    assert record["outcome"] == "refused"
    assert record["gate"]["passed"] is False
    assert any(r.startswith("gravel: new task") for r in record["gate"]["reasons"]), record["gate"]
    assert record["metrics"]["after"]["gravel"] < 0.95
    # the live bundle, the run, the dataset are as they were; the drop waits for a person
    assert line.state() == before
    assert line.current() == "patchcore-v000002"
    assert line.status_version() == 2
    back = line.drop / "gravel"
    assert sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file()) == drop_files
    assert not list(line.root.glob(".run.refresh-*"))
    assert not [p for p in line.store.iterdir() if p.name.startswith(".export-")]
    verdict = line.score_one(line.dataset / "brick" / "test" / "good" / "000.png")
    assert verdict["model"]["version"] == 2
    shutil.rmtree(back)  # a person took it away


def test_c_rollback_and_forward_again(line: Line) -> None:
    if len(line.published()) < 2:
        pytest.skip("needs the bundle published by test_a")
    code, out = line.refresh("rollback")
    assert code == 0, out
    assert line.current() == "patchcore-v000001"
    assert line.status_version() == 1  # the CLI waited for the edge's confirmation
    assert line.records()[-1]["outcome"] == "rolled-back"
    verdict = line.score_after_swap(line.dataset / "moon" / "test" / "good" / "000.png")
    assert verdict["model"]["version"] == 1

    code, out = line.refresh("rollback", "--to", "2")
    assert code == 0, out
    assert line.current() == "patchcore-v000002"
    assert line.status_version() == 2
    code, out = line.refresh("status", "--json")
    assert code == 0, out
    status = json.loads(out)
    assert status["current"] == "patchcore-v000002"
    assert status["rollback_target"] == "patchcore-v000001"


def test_d_more_good_images_of_a_known_product_make_a_bank_only_bundle(line: Line) -> None:
    from linewatch.trainer.data.generate import generate_dataset

    base = line.current()
    extra = line.root / "extra"
    generate_dataset(extra, ["brick"], n_train=6, n_test_good=0, n_test_defect=0, size=SIZE, seed=7)
    (line.drop / "brick" / "train").mkdir(parents=True)
    shutil.move(str(extra / "brick" / "train" / "good"), str(line.drop / "brick" / "train" / "good"))
    n_before = len(list((line.dataset / "brick" / "train" / "good").glob("*.png")))

    code, out = line.refresh("run", env=FROM_RUN)
    assert code == 0, out
    record = line.records()[-1]
    assert record["outcome"] == "published", record
    assert record["drop"]["export"] == "bank-only"
    assert record["drop"]["added_images"] == {"brick": 6}
    new = line.current()
    assert new != base
    manifest = json.loads((line.store / new / "manifest.json").read_text())
    base_manifest = json.loads((line.store / base / "manifest.json").read_text())
    assert manifest["bank_only"]["base_version"] == base_manifest["model"]["version"]
    assert not (line.store / new / "model.onnx").exists()  # the base's graph and engines are reused
    assert manifest["model"]["version"] == record["versions"]["live"]
    assert line.status_version() == manifest["model"]["version"]
    # same shapes as the base: the trainer pads each product's bank to its budget share
    base_inputs = {d["name"]: d["shape"] for d in base_manifest["data_inputs"]}
    assert {d["name"]: d["shape"] for d in manifest["data_inputs"]} == base_inputs
    # the trainer re-learned brick from all its images, which are now in the dataset
    metrics = json.loads((line.run_dir / "metrics.json").read_text())
    assert metrics["tasks"] == [*KNOWN, NEW]
    assert [r["task"] for r in metrics["relearned"]] == ["brick"]
    assert len(list((line.dataset / "brick" / "train" / "good").glob("*.png"))) == n_before + 6
    verdict = line.score_after_swap(line.dataset / "brick" / "test" / "good" / "001.png")
    assert verdict["model"]["version"] == manifest["model"]["version"]
    # the base is kept beside it (pruning never removes the base of a kept bank-only bundle)
    assert base in line.published()
