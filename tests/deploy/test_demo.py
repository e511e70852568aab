"""`make demo`, CI-sized (`--fast`), end to end against a real mosquitto; and its small guards.

The demo is run as `make demo` runs it (`python -m linewatch.deploy.demo --out DIR`), in a subprocess,
and judged on the `summary.json` it leaves, which records what the demo's own subscriber saw.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from linewatch.deploy import demo
from linewatch.deploy.localbroker import MOSQUITTO

REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie is not running; a reused pid would not be ours: look at its command line
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return state != "Z" and (b"mosquitto" in cmdline or b"edge" in cmdline)


@pytest.mark.slow
def test_fast_demo_end_to_end(tmp_path: Path) -> None:
    if MOSQUITTO is None:
        pytest.skip("mosquitto is not installed (`make mosquitto`)")
    out = tmp_path / "demo-out"
    proc = subprocess.run(
        [sys.executable, "-m", "linewatch.deploy.demo", "--out", str(out), "--fast"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    text = proc.stdout + proc.stderr
    assert proc.returncode == 0, text[-6000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["ok"] is True, summary["checks"]
    for step in range(1, 10):
        assert f"[{step}/9]" in proc.stdout

    # nothing lost: every frame written into the camera folder has exactly one verdict
    results = summary["results"]
    assert results["frames_sent"] > 0
    assert results["results_lost"] == 0
    assert results["results_received"] == results["frames_sent"]
    assert results["frame_id_gaps"] == 0
    assert results["fps"] and results["fps"] > 0
    assert results["latency_ms"]["pipeline_p99"] is not None

    # the refresh published v2, the running edge reported it, and swapped between two frames
    assert summary["refresh"]["exit_code"] == 0
    assert summary["refresh"]["outcome"] == "published"
    assert summary["refresh"]["gate"] is True
    assert summary["versions"]["first"] == 1
    assert summary["versions"]["after"] == 2
    assert summary["versions"]["edge_status"] == 2
    switch = summary["switch"]
    assert switch["first_new"] == switch["last_old"] + 1
    assert summary["during_refresh"]["versions"] == [1, 2]

    # the new product's defects: all caught after the refresh, by the new model
    after = summary["after_refresh"]
    assert after["versions"] == [2]
    assert after["defects"] > 0 and after["caught"] == after["defects"]
    assert after["false_alarms"] <= after["good"] // 4
    # the known products' verdicts on frames with known defects
    production = summary["production"]
    assert production["caught"] >= 0.75 * production["defects"]
    assert production["false_alarms"] <= 0.25 * production["good"]

    # the table and the summary were printed, and everything was stopped
    assert "results lost" in proc.stdout and "frames/s" in proc.stdout
    for name, pid in summary["pids"].items():
        assert not _alive(pid), f"{name} (pid {pid}) still runs after the demo"
    assert summary["edge_exit_code"] == 0
    assert (out / "store" / "current").resolve().name == "patchcore-v000002"


def test_demo_refuses_to_wipe_a_folder_it_did_not_make(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    mine = tmp_path / "precious"
    mine.mkdir()
    (mine / "thesis.tex").write_text("keep me")
    assert demo.main(["--out", str(mine), "--fast"]) == 2
    assert (mine / "thesis.tex").read_text() == "keep me"
    assert "not made by the demo" in capsys.readouterr().out


def test_plans_are_sane() -> None:
    for plan in (demo.FULL, demo.FAST):
        assert plan.size % 8 == 0 and plan.size >= 32
        assert plan.new_product not in plan.products
        assert plan.n_train >= 8 and plan.video_frames % plan.defect_every == 0
    assert demo.FAST.size <= demo.FULL.size and demo.FAST.burst <= demo.FULL.burst
