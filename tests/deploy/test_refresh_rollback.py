"""Rollback repoints `current` to the previous version, and the edge confirms it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from refresh_testkit import FakeEdge, write_bundle, write_config

from linewatch.deploy.refresh.codes import Exit
from linewatch.deploy.refresh.config import load_config
from linewatch.deploy.refresh.publish import LocalStore, StoreError
from linewatch.deploy.refresh.rollback import choose_target, rollback_to
from linewatch.deploy.refresh.runlog import read_records

REPO = Path(__file__).resolve().parents[2]


def _store_with(tmp_path: Path, versions: list[int]) -> LocalStore:
    store = LocalStore(tmp_path / "bundles")
    store.root.mkdir(exist_ok=True)
    for v in versions:
        store.publish(write_bundle(tmp_path / "src" / str(v), v, sizes=(1000,)))
    return store


def test_choose_target_is_the_version_below_current(tmp_path: Path) -> None:
    store = _store_with(tmp_path, [1, 2, 3])
    assert choose_target(store).dirname == "linewatch-v000002"
    assert choose_target(store, 1).dirname == "linewatch-v000001"
    with pytest.raises(StoreError, match="already current"):
        choose_target(store, 3)
    with pytest.raises(StoreError, match="no published bundle with version 9"):
        choose_target(store, 9)
    store.point_current("linewatch-v000001")
    with pytest.raises(StoreError, match="no version older"):
        choose_target(store)


def test_rollback_repoints_and_is_confirmed_by_the_edge(tmp_path: Path, broker_port: int) -> None:
    root = "linewatch/rb/line/st/cam0"
    config = write_config(
        tmp_path, mqtt={"url": f"mqtt://127.0.0.1:{broker_port}", "topic_root": root, "confirm_timeout_s": 10}
    )
    cfg = load_config(config)
    store = _store_with(tmp_path, [1, 2, 3])
    with FakeEdge(store.root, broker_port, [root]) as edge:
        result = rollback_to(cfg, store, choose_target(store), say=lambda s: None)
    assert result.ok and result.confirm is not None and result.confirm.ok
    assert os.readlink(store.root / "current") == "linewatch-v000002"
    assert edge.serving == 2


def test_cli_rollback_twice_then_status(tmp_path: Path, broker_port: int) -> None:
    root = "linewatch/rbcli/line/st/cam0"
    config = write_config(
        tmp_path, mqtt={"url": f"mqtt://127.0.0.1:{broker_port}", "topic_root": root, "confirm_timeout_s": 10}
    )
    store = _store_with(tmp_path, [4, 5, 6])

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "linewatch.deploy.refresh", *args, "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
        )

    with FakeEdge(store.root, broker_port, [root]):
        first = cli("rollback")
        assert first.returncode == 0, first.stdout + first.stderr
        assert "current linewatch-v000006 -> linewatch-v000005" in first.stdout
        assert "confirmed" in first.stdout
        second = cli("rollback")
        assert second.returncode == 0, second.stdout
        assert store.current() == "linewatch-v000004"
        third = cli("rollback")
        assert third.returncode == Exit.FAILED and "no version older" in third.stdout
        forward = cli("rollback", "--to", "6")
        assert forward.returncode == 0 and store.current() == "linewatch-v000006"
        status = cli("status", "--live")
    assert status.returncode == 0, status.stderr
    assert "current:   linewatch-v000006" in status.stdout
    assert "linewatch-v000005, linewatch-v000004" in status.stdout
    assert "rollback -> rolled-back" in status.stdout
    assert "'version': 6" in status.stdout  # --live: the edge's retained status
    records = read_records(tmp_path / "log" / "refresh.jsonl")
    assert [r["outcome"] for r in records] == ["rolled-back", "rolled-back", "failed", "rolled-back"]
    assert records[0]["versions"] == {"before": 6, "after": 5, "live": 5}
    js = cli("status", "--json")
    assert json.loads(js.stdout)["rollback_target"] == "linewatch-v000005"


def test_unconfirmed_rollback_has_its_own_exit_code(tmp_path: Path, broker_port: int) -> None:
    root = "linewatch/rbfail/line/st/cam0"
    config = write_config(
        tmp_path, mqtt={"url": f"mqtt://127.0.0.1:{broker_port}", "topic_root": root, "confirm_timeout_s": 1}
    )
    store = _store_with(tmp_path, [1, 2])
    proc = subprocess.run(
        [sys.executable, "-m", "linewatch.deploy.refresh", "rollback", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert proc.returncode == Exit.ROLLBACK_FAILED, proc.stdout
    assert store.current() == "linewatch-v000001"  # repointed all the same
    assert "NOT confirmed" in proc.stdout
