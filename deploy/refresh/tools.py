"""The other parts' command-line tools, run as subprocesses.

The refresh job never imports the trainer or the exporter: it runs
`python -m linewatch.trainer|export|edge` with the interpreter from the config, so the job
works with any venv layout, a crash in training cannot take the job down with it,
and a step can be killed on timeout. Each wrapper is a plain function so the
integration test can call the steps one by one with the real CLIs.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shlex
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from linewatch.deploy.refresh.config import RefreshConfig
from linewatch.deploy.refresh.gate import read_eval

__all__ = [
    "RunInfo",
    "StepError",
    "evaluate",
    "export_bundle",
    "read_run_info",
    "run_tool",
    "train_update",
    "verify",
]

Say = Callable[[str], None]


class StepError(RuntimeError):
    """An external step failed; carries the tail of its output for the log."""

    def __init__(self, step: str, argv: Sequence[str], returncode: int | None, tail: str) -> None:
        self.step, self.argv, self.returncode, self.tail = step, list(argv), returncode, tail
        how = "timed out" if returncode is None else f"exited with {returncode}"
        super().__init__(f"{step} {how}: {shlex.join(self.argv)}\n{tail}".rstrip())


def run_tool(step: str, argv: Sequence[str], timeout_s: float, say: Say = print) -> None:
    """Run one tool, echoing its output indented, killing its process group on timeout."""
    say(f"[{step}] $ {shlex.join(argv)}")
    tail: collections.deque[str] = collections.deque(maxlen=40)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,  # so a timeout kills the tool's workers too
        )
    except OSError as exc:
        raise StepError(step, argv, 127, str(exc)) from None

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            say(f"    {line}")

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        returncode: int | None = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        returncode = None
    except BaseException:
        # Interrupted (SIGTERM from systemd, Ctrl-C): the tool runs in its own session,
        # so it would outlive us and keep writing into the workspace. Stop it first.
        _kill_group(proc)
        raise
    reader.join(timeout=5)
    if returncode != 0:
        raise StepError(step, argv, returncode, "\n".join(tail))


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class RunInfo:
    """What the refresh needs to know about a run directory, from its metrics.json."""

    def __init__(self, tasks: list[str], method: str, doc: dict[str, Any]) -> None:
        self.tasks, self.method, self.doc = tasks, method, doc


def read_run_info(run_dir: Path) -> RunInfo:
    path = Path(run_dir) / "metrics.json"
    try:
        doc = json.loads(path.read_text())
        tasks = [str(t) for t in doc["tasks"]]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{path}: cannot read the run's task list ({exc})") from None
    return RunInfo(tasks, str(doc.get("method", "")), doc)


def _module(cfg: RefreshConfig, name: str) -> list[str]:
    return [cfg.python, "-m", f"linewatch.{name}"]


def _data_spec(cfg: RefreshConfig, root: Path) -> str:
    return f"{cfg.data_format}:{root}"


def train_update(
    cfg: RefreshConfig, run: Path, data_root: Path, tasks: Sequence[str], say: Say = print
) -> None:
    """`linewatch-train update`: learn `tasks` (new ones, or known ones with more images) in `run`."""
    argv = [
        *_module(cfg, "trainer"),
        "update",
        "--run",
        str(run),
        "--data",
        _data_spec(cfg, data_root),
        "--tasks",
        ",".join(tasks),
    ]
    run_tool("train update", argv, cfg.steps.train_timeout_s, say)


def evaluate(
    cfg: RefreshConfig, run: Path, data_root: Path, tasks: Sequence[str], out: Path, say: Say = print
) -> dict[str, float | None]:
    """`linewatch-train eval` into `out`; returns the per-task gate metric from its last matrix row."""
    argv = [
        *_module(cfg, "trainer"),
        "eval",
        "--run",
        str(run),
        "--data",
        _data_spec(cfg, data_root),
        "--tasks",
        ",".join(tasks),
        "--out",
        str(out),
    ]
    run_tool("eval", argv, cfg.steps.eval_timeout_s, say)
    if not Path(out).is_file():
        raise StepError("eval", argv, 0, f"the evaluator wrote no {out}")
    try:
        return read_eval(out, cfg.gate.metric)
    except (ValueError, json.JSONDecodeError) as exc:
        raise StepError("eval", argv, 0, str(exc)) from None


def export_bundle(
    cfg: RefreshConfig,
    run: Path,
    out: Path,
    *,
    bank_only: bool,
    store: Path | None = None,
    version: int | None = None,
    say: Say = print,
) -> None:
    """`linewatch-export`, always signed; `--bank-only` when only a memory bank changed.

    `store` is the local bundle store: the exporter numbers the version above
    every bundle there and finds a bank-only refresh's base in it. For a remote
    store the caller passes the next `version` instead.
    """
    argv = [*_module(cfg, "export"), "--run", str(run), "--out", str(out), "--sign-key", str(cfg.sign_key)]
    if bank_only:
        argv.append("--bank-only")
    if store is not None:
        argv += ["--store", str(store)]
    if version is not None:
        argv += ["--version", str(version)]
    argv += cfg.steps.export_args
    run_tool("export", argv, cfg.steps.export_timeout_s, say)


def verify(
    cfg: RefreshConfig,
    bundle: Path,
    say: Say = print,
    score: Sequence[Path] = (),
    out: Path | None = None,
) -> list[dict[str, Any]]:
    """`linewatch-edge verify` with the public key: the check the edge will make, made first.

    With `score`, the edge also scores those images with the verified bundle on its own backend
    (the operator's false alarms); returns their entries (file, score, anomalous) from `out`.
    """
    argv = [*_module(cfg, "edge"), "verify", "--bundle", str(bundle), "--key", str(cfg.public_key)]
    if score:
        if out is None:
            raise ValueError("verify: scoring images needs an out file for the report")
        argv += ["--out", str(out), "--score", *(str(p) for p in score)]
    run_tool("verify", argv, cfg.steps.export_timeout_s, say)
    if not score:
        return []
    assert out is not None
    try:
        return list(json.loads(Path(out).read_text())["images"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise StepError("verify", argv, 0, f"no image scores in {out}: {exc}") from None
