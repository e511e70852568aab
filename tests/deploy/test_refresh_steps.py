"""The whole refresh run, with stand-in trainer/export/edge CLIs (refresh_fake_tools.py).

Real subprocesses, real files, a real broker and a stand-in edge watching the store:
what is tested is the orchestration and its promises (the old run, dataset and
bundle survive every failure; the new one goes live only when confirmed). The
end-to-end test with the real trainer is the integrator's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from refresh_testkit import FakeEdge, fake_ssh_bin, publish_status, write_bundle, write_config

from linewatch.deploy.refresh.codes import Exit
from linewatch.deploy.refresh.config import load_config
from linewatch.deploy.refresh.publish import LocalStore
from linewatch.deploy.refresh.runlog import read_records
from linewatch.deploy.refresh.steps import run_refresh

FAKE_TOOLS = Path(__file__).with_name("refresh_fake_tools.py")
REPO = Path(__file__).resolve().parents[2]
ROOT = "linewatch/plant/line1/st1/cam0"


@dataclass
class Setup:
    root: Path
    config: Path
    store: LocalStore
    calls_file: Path

    @property
    def calls(self) -> list[dict[str, Any]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    @property
    def log(self) -> list[dict[str, Any]]:
        return read_records(self.root / "log" / "refresh.jsonl")

    def run(self) -> tuple[Exit, list[str]]:
        lines: list[str] = []
        code, _ = run_refresh(load_config(self.config), say=lines.append)
        return code, lines

    def state(self) -> str:
        return (self.root / "run" / "state.json").read_text()

    def leftovers(self) -> list[str]:
        return [p.name for p in self.root.iterdir() if p.name.startswith(".run.refresh-")]


def _setup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: dict[str, Any], port: int | None = None
) -> Setup:
    wrapper = tmp_path / "fake-python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{FAKE_TOOLS}" "$@"\n')
    wrapper.chmod(0o755)
    mqtt = {"url": f"mqtt://127.0.0.1:{port}", "topic_root": ROOT, "confirm_timeout_s": 3} if port else {}
    config = write_config(
        tmp_path, tasks=["brick", "gravel"], python=wrapper, **({"mqtt": mqtt} if mqtt else {})
    )
    (tmp_path / "plan.json").write_text(json.dumps(plan))
    monkeypatch.setenv("FAKE_TOOLS_PLAN", str(tmp_path / "plan.json"))
    monkeypatch.setenv("FAKE_TOOLS_CALLS", str(tmp_path / "calls.jsonl"))
    store = LocalStore(tmp_path / "bundles")
    live = write_bundle(tmp_path / "live", 10, sizes=(1000,))  # what the edge serves today: a full bundle
    store.publish(live)
    return Setup(tmp_path, config, store, tmp_path / "calls.jsonl")


def _drop_images(s: Setup, task: str, n: int = 2) -> None:
    good = s.root / "drop" / task / "train" / "good"
    good.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (good / f"new{i}.png").write_bytes(b"png" + bytes([i]))


def _drop_new_task(s: Setup, task: str) -> None:
    for sub, name in (("train/good", "a.png"), ("test/good", "b.png"), ("test/dent", "c.png")):
        (s.root / "drop" / task / sub).mkdir(parents=True, exist_ok=True)
        (s.root / "drop" / task / sub / name).write_bytes(b"png")


def test_bank_only_refresh_publishes_confirms_and_swaps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_port: int
) -> None:
    s = _setup(
        tmp_path,
        monkeypatch,
        {"before": {"brick": 0.98, "gravel": 0.97}, "after": {"brick": 0.985, "gravel": 0.96}},
        broker_port,
    )
    _drop_images(s, "brick")
    with FakeEdge(s.store.root, broker_port, [ROOT]) as edge:
        code, lines = s.run()
    assert code == Exit.OK, "\n".join(lines)
    assert edge.loaded == [10, 11]
    assert s.store.current() == "linewatch-v000011"
    manifest = json.loads((s.store.root / "current" / "manifest.json").read_text())
    # Only more images for a known task with a memory-bank method: a bank-only bundle on the
    # live full bundle, verified beside it (in the store), where the edge resolves its base.
    assert manifest["bank_only"]["base_version"] == 10

    # The CLI contract the other parts must honour, as called.
    modules = [(c["module"], c["args"][0]) for c in s.calls]
    assert modules == [
        ("trainer", "eval"),
        ("trainer", "update"),
        ("trainer", "eval"),
        ("export", "--run"),
        ("edge", "verify"),
    ]
    update = s.calls[1]["args"]
    assert update[update.index("--tasks") + 1] == "brick"
    assert update[update.index("--run") + 1] != str(s.root / "run")  # trains a copy, never the live run
    export_args = s.calls[3]["args"]
    assert "--bank-only" in export_args and "--sign-key" in export_args
    assert export_args[export_args.index("--store") + 1] == str(s.store.root)
    assert Path(export_args[export_args.index("--out") + 1]).parent == s.store.root
    verify = s.calls[4]["args"]
    assert verify[verify.index("--key") + 1] == str(s.root / "keys" / "linewatch.pub")
    # The trainer records the dataset it learned from and re-reads it later: the real one.
    assert update[update.index("--data") + 1] == f"mvtec:{s.root / 'dataset'}"
    after_eval = s.calls[2]["args"]
    assert after_eval[after_eval.index("--tasks") + 1] == "brick,gravel"

    # The run was swapped in, the old one kept; the drop moved into the dataset.
    assert json.loads(s.state())["updates"] == 1
    assert json.loads((s.root / ".run.prev" / "state.json").read_text())["updates"] == 0
    assert (s.root / "dataset" / "brick" / "train" / "good" / "new0.png").is_file()
    assert list((s.root / "drop" / "brick" / "train" / "good").iterdir()) == []
    assert s.leftovers() == []

    [record] = s.log
    assert record["outcome"] == "published" and record["exit_code"] == 0
    assert record["versions"] == {"before": 10, "after": 11, "live": 11}
    assert record["gate"]["passed"] is True and record["confirm"]["ok"] is True
    assert record["metrics"]["after"] == {"brick": 0.985, "gravel": 0.96}
    assert set(record["timings_s"]) >= {
        "scan",
        "prepare",
        "eval-before",
        "train",
        "eval-after",
        "gate",
        "export",
        "verify",
        "publish",
        "confirm",
        "swap-run",
        "apply-drop",
        "prune",
    }
    assert "==> gate:" in "\n".join(lines) and "==> publish:" in "\n".join(lines)


def test_new_task_gets_a_full_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _setup(tmp_path, monkeypatch, {"after": {"brick": 0.99, "gravel": 0.99, "tile": 0.93}})
    _drop_new_task(s, "tile")
    code, lines = s.run()
    assert code == Exit.OK, "\n".join(lines)
    assert "--bank-only" not in s.calls[3]["args"]
    assert json.loads((s.store.root / "current" / "manifest.json").read_text())["tasks"] == [
        "brick",
        "gravel",
        "tile",
    ]
    assert (s.root / "dataset" / "tile" / "test" / "dent" / "c.png").is_file()
    assert not (s.root / "drop" / "tile").exists()
    assert s.log[-1]["confirm"] == {"skipped": True}
    assert any("confirm: skipped" in line for line in lines)


def test_remote_store_gets_a_full_export_with_an_explicit_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _setup(tmp_path, monkeypatch, {})
    bindir = fake_ssh_bin(tmp_path / "bin")
    remote = tmp_path / "edge-box" / "bundles"
    text = s.config.read_text().replace(
        f'dir = "{s.store.root}"',
        f'remote = "linewatch@edge-box:{remote}"\nssh = ["{bindir / "ssh"}"]\nrsync = ["{bindir / "rsync"}"]',
    )
    s.config.write_text(text)
    remote.mkdir(parents=True)
    LocalStore(remote).publish(write_bundle(tmp_path / "remote-live", 10, sizes=(100,)))
    _drop_images(s, "brick")
    code, lines = s.run()
    assert code == Exit.OK, "\n".join(lines)
    export_args = s.calls[3]["args"]
    assert "--bank-only" not in export_args and "--store" not in export_args
    assert export_args[export_args.index("--version") + 1] == "11"
    assert os.readlink(remote / "current") == "linewatch-v000011"
    assert not any(n.startswith(".incoming-") for n in os.listdir(remote))


@pytest.mark.parametrize("score", [0.2, 0.7])
def test_operator_false_alarms_must_pass_the_new_bundle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_port: int, score: float
) -> None:
    """Drop files named by contract.feedback are scored by `edge verify --score`; one still flagged refuses."""
    s = _setup(tmp_path, monkeypatch, {"false_alarm_score": score}, broker_port)
    _drop_images(s, "brick", 1)
    good = s.root / "drop" / "brick" / "train" / "good"
    (good / "cam0-f000000007-v10.png").write_bytes(b"png-fa")
    with FakeEdge(s.store.root, broker_port, [ROOT]):
        code, lines = s.run()
    verify = next(c["args"] for c in s.calls if c["module"] == "edge")
    scored = verify[verify.index("--score") + 1 :]
    assert scored == [str(s.root / "dataset" / "brick" / "train" / "good" / "cam0-f000000007-v10.png")]
    record = s.log[-1]
    [check] = [c for c in record["gate"]["checks"] if c["kind"] == "feedback"]
    assert check["message"].startswith(f"operator false alarms: {int(score < 0.5)}/1 now pass")
    if score < 0.5:
        assert code == Exit.OK and record["outcome"] == "published", "\n".join(lines)
        assert record["gate"]["passed"] is True
    else:
        assert code == Exit.REFUSED and record["outcome"] == "refused"
        assert record["gate"]["passed"] is False and record["gate"]["reasons"] == [check["message"]]
        assert s.store.current() == "linewatch-v000010"
        assert (good / "cam0-f000000007-v10.png").is_file()  # moved back for a person to look at
        assert s.leftovers() == []


def test_gate_refusal_changes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _setup(
        tmp_path,
        monkeypatch,
        {"before": {"brick": 0.99, "gravel": 0.98}, "after": {"brick": 0.99, "gravel": 0.90, "tile": 0.80}},
    )
    _drop_new_task(s, "tile")
    state = s.state()
    code, lines = s.run()
    assert code == Exit.REFUSED == 3
    assert s.store.current() == "linewatch-v000010"
    assert [c["module"] for c in s.calls] == ["trainer", "trainer", "trainer"]  # no export after refusal
    assert s.state() == state
    assert (s.root / "drop" / "tile" / "train" / "good" / "a.png").is_file()  # moved back
    assert not (s.root / "dataset" / "tile").exists()
    assert s.leftovers() == []
    record = s.log[-1]
    assert record["outcome"] == "refused" and record["exit_code"] == 3
    assert [r.split(":")[0] for r in record["gate"]["reasons"]] == ["gravel", "tile"]
    assert any("REFUSED gravel" in line for line in lines)


@pytest.mark.parametrize("step", ["train", "eval", "export", "verify"])
def test_a_failing_step_leaves_run_dataset_and_bundle_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    s = _setup(tmp_path, monkeypatch, {"fail": step})
    _drop_images(s, "gravel")
    state = s.state()
    code, lines = s.run()
    assert code == Exit.FAILED
    assert s.state() == state  # the crash wrote into the copy only
    assert s.store.current() == "linewatch-v000010"
    assert [p.version for p in s.store.published()] == [10]
    assert (s.root / "drop" / "gravel" / "train" / "good" / "new0.png").is_file()
    assert s.leftovers() == []
    record = s.log[-1]
    assert record["outcome"] == "failed"
    if step == "train":
        assert "CUDA out of memory" in record["message"]
    assert any("unchanged" in line for line in lines)


def test_unconfirmed_bundle_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broker_port: int
) -> None:
    s = _setup(tmp_path, monkeypatch, {}, broker_port)
    _drop_images(s, "brick")
    state = s.state()
    with FakeEdge(s.store.root, broker_port, [ROOT], refuse=[11]) as edge:
        code, lines = s.run()
    assert code == Exit.ROLLED_BACK == 4, "\n".join(lines)
    assert edge.serving == 10
    assert s.store.current() == "linewatch-v000010"
    assert [p.version for p in s.store.published()] == [10]
    assert any(n.startswith(".rejected-linewatch-v000011-") for n in os.listdir(s.store.root))
    assert s.state() == state and not (s.root / ".run.prev").exists()
    assert (s.root / "drop" / "brick" / "train" / "good" / "new0.png").is_file()
    record = s.log[-1]
    assert record["outcome"] == "rolled-back"
    assert record["confirm"]["ok"] is False and record["confirm"]["rollback"]["confirm"]["ok"] is True
    assert record["versions"]["live"] == 10
    # The refused version number is free again for the next attempt.
    publish_status(broker_port, ROOT, 11)
    code2, _ = s.run()
    assert code2 == Exit.OK and s.store.current() == "linewatch-v000011"


def test_a_crashed_run_is_undone_by_the_next_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from linewatch.deploy.refresh.drop import apply_drop, scan_drop

    s = _setup(tmp_path, monkeypatch, {})
    _drop_new_task(s, "tile")
    # What a power cut during training leaves: a workspace, a journal, the drop moved into the dataset.
    ws = s.root / ".run.refresh-20260101T000000Z-dead00"
    (ws / "run").mkdir(parents=True)
    scan = scan_drop(s.root / "drop", ["brick", "gravel"], s.root / "dataset", settle_s=0)
    apply_drop(scan, s.root / "dataset", s.root / "drop", ws / "drop-journal.json", {"run_copy_inode": 1})
    assert (s.root / "dataset" / "tile").is_dir() and not (s.root / "drop" / "tile").exists()
    code, lines = s.run()
    assert code == Exit.OK, "\n".join(lines)
    assert any("3 file(s) moved back to the drop directory" in line for line in lines)
    assert s.calls[1]["args"][s.calls[1]["args"].index("--tasks") + 1] == "tile"  # retried, then released
    assert (s.root / "dataset" / "tile" / "test" / "dent" / "c.png").is_file()
    assert s.leftovers() == [] and s.store.current() == "linewatch-v000011"


def test_nothing_to_do_and_dry_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    s = _setup(tmp_path, monkeypatch, {})
    code, _lines = s.run()
    assert code == Exit.OK and s.calls == []
    assert s.log[-1]["outcome"] == "nothing-to-do"
    _drop_images(s, "brick")
    proc = subprocess.run(
        [sys.executable, "-m", "linewatch.deploy.refresh", "run", "--dry-run", "--config", str(s.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr
    assert "brick: 2 new good image(s)" in proc.stdout
    assert "would train brick, export bank-only" in proc.stdout
    assert s.calls == [] and len(s.log) == 1


def test_second_run_is_locked_out_and_sigterm_cleans_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = _setup(tmp_path, monkeypatch, {"hang": "train"})
    _drop_images(s, "brick")
    proc = subprocess.Popen(
        [sys.executable, "-m", "linewatch.deploy.refresh", "run", "--config", str(s.config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=REPO,
    )
    deadline = time.monotonic() + 30
    while not any(c["args"][0] == "update" for c in s.calls) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)
    # A second run while the first is training: refused at once with the lock's exit code.
    second = subprocess.run(
        [sys.executable, "-m", "linewatch.deploy.refresh", "run", "--config", str(s.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert second.returncode == Exit.LOCKED, second.stdout + second.stderr
    assert f"pid {proc.pid}" in second.stdout
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == Exit.FAILED, out
    assert "interrupted" in out
    assert s.leftovers() == []
    assert s.log[-1]["outcome"] == "interrupted"
    assert s.store.current() == "linewatch-v000010"
    time.sleep(0.2)
    assert _processes_mentioning(str(tmp_path / ".run.refresh-")) == []  # the trainer did not outlive the job


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{pid}: {cmdline}")
    return found
