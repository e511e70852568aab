"""One refresh at a time: a second run is refused with its own exit code, not queued."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from refresh_testkit import write_config

from linewatch.deploy.refresh.codes import Exit
from linewatch.deploy.refresh.lock import LockBusy, RefreshLock

HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
os.pwrite(fd, f"{os.getpid()}\\n".encode(), 0)
print("locked", flush=True)
sys.stdin.read()
"""


def test_second_lock_in_the_same_process_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "refresh.lock"
    with RefreshLock(path):
        with pytest.raises(LockBusy) as info, RefreshLock(path):
            pass
        assert str(__import__("os").getpid()) in str(info.value)
    with RefreshLock(path):  # released: can be taken again
        pass


def test_lock_is_released_when_the_holder_dies(tmp_path: Path) -> None:
    path = tmp_path / "refresh.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    with pytest.raises(LockBusy, match=f"pid {holder.pid}"):
        RefreshLock(path).acquire()
    holder.kill()
    holder.wait()
    with RefreshLock(path):
        pass


def test_concurrent_cli_run_exits_with_the_locked_code(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path / "refresh.lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        for command in (["run"], ["rollback"]):
            proc = subprocess.run(
                [sys.executable, "-m", "linewatch.deploy.refresh", *command, "--config", str(config)],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=Path(__file__).resolve().parents[2],
            )
            assert proc.returncode == Exit.LOCKED == 75, proc.stdout + proc.stderr
            assert "another linewatch-refresh is running" in proc.stdout
            assert f"pid {holder.pid}" in proc.stdout
    finally:
        holder.kill()
        holder.wait()
    # Not a run: nothing is logged for a refused start.
    assert not (tmp_path / "log" / "refresh.jsonl").exists()
