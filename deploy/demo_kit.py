"""The demo's console and child processes: numbered steps, tools run with their output echoed, the
long-lived broker and edge stopped on every exit path.

Plumbing kept apart from `deploy/demo.py` so that file reads as the story it tells.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

# ----------------------------------------------------------------------------- printing
_print_lock = threading.Lock()


def say(text: str = "") -> None:
    with _print_lock:
        print(text, flush=True)


class Steps:
    """Numbered step headers with their durations."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.times: dict[str, float] = {}
        self._name: str | None = None
        self._t0 = 0.0

    def __call__(self, name: str, text: str) -> None:
        self.end()
        self.n += 1
        self._name, self._t0 = name, time.monotonic()
        say()
        say(f"[{self.n}/{self.total}] {text}")

    def end(self) -> None:
        if self._name is not None:
            self.times[self._name] = round(time.monotonic() - self._t0, 1)
            say(f"      ({self._name}: {self.times[self._name]:.1f}s)")
            self._name = None


class DemoError(RuntimeError):
    """A step failed; the message says which and where its log is."""


class UsageError(DemoError):
    """Bad usage (exit status 2)."""


# ----------------------------------------------------------------------------- processes
class Children:
    """Every long-lived child (broker, edge) in its own process group, stopped on exit."""

    def __init__(self) -> None:
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(
        self, name: str, argv: Sequence[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen:
        fh = open(log, "ab")  # noqa: SIM115 - closed with the process
        try:
            proc = subprocess.Popen(
                list(argv),
                stdout=fh,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # its own group: stopping it stops its threads' children too
            )
        finally:
            fh.close()
        self.procs.append((name, proc))
        return proc

    @staticmethod
    def stop(name: str, proc: subprocess.Popen, grace_s: float) -> int | None:
        """SIGTERM to the group (a graceful drain), SIGKILL after `grace_s`."""
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                say(f"      {name} did not stop within {grace_s:g}s; killing it")
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # whatever is left of its group
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
        return proc.returncode

    def stop_all(self) -> None:
        for name, proc in reversed(self.procs):  # edge before broker: it publishes offline, drains
            self.stop(name, proc, 40.0 if name == "edge" else 10.0)
        self.procs.clear()


def run_tool(
    label: str,
    argv: Sequence[str],
    log: Path,
    *,
    echo: Callable[[str], bool] | None = None,
    timeout_s: float = 1800.0,
) -> int:
    """Run a CLI to completion, echoing its output indented (all of it goes to `log`)."""
    say(f"      $ {shlex.join(short(argv))}")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    lines: queue.Queue[str | None] = queue.Queue()
    with open(log, "a", encoding="utf-8") as fh:
        fh.write(f"$ {shlex.join(argv)}\n")
        proc = subprocess.Popen(
            list(argv),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            errors="replace",
            env=env,
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                try:
                    line = lines.get(timeout=0.5)
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise DemoError(f"{label} took longer than {timeout_s:g}s (log: {log})") from None
                    continue
                if line is None:
                    break
                fh.write(line + "\n")
                if echo is None or echo(line):
                    say(f"      {label} | {line}")
            return proc.wait()
        finally:
            if proc.poll() is None:  # interrupted or timed out: stop it and its workers
                Children.stop(label, proc, 30.0)
                with contextlib.suppress(queue.Empty):  # what it said while cleaning up
                    while (line := lines.get(timeout=1.0)) is not None:
                        fh.write(line + "\n")
                        say(f"      {label} | {line}")


def short(argv: Sequence[str]) -> list[str]:
    """The command as a person would type it (`python -m x`, paths relative to the cwd)."""
    out = []
    for i, arg in enumerate(argv):
        if i == 0 and arg == sys.executable:
            out.append("python")
            continue
        with contextlib.suppress(ValueError):
            if os.path.isabs(arg):
                rel = os.path.relpath(arg)
                arg = rel if not rel.startswith("../..") else arg
        out.append(arg)
    return out


class QuietJson:
    """An echo filter: hides JSON log lines and `edge verify`'s JSON report (the log keeps them).

    Each report is parsed; with `label`, it is shown right away as one line under that label.
    """

    def __init__(self, label: str | None = None) -> None:
        self.label = label
        self.depth = 0
        self.doc: list[str] = []
        self.reports: list[dict[str, Any]] = []

    def __call__(self, line: str) -> bool:
        text = line.strip()
        if self.depth == 0 and text.startswith('{"ts"'):
            return False
        if self.depth == 0 and text != "{":
            return True
        if self.depth == 0:
            self.doc = []
        self.doc.append(text)
        self.depth += text.count("{") - text.count("}")
        if self.depth <= 0:
            self.depth = 0
            with contextlib.suppress(ValueError):
                self.reports.append(json.loads("\n".join(self.doc)))
                if self.label:
                    say(f"      {self.label} |     {self.verdict()}")
        return False

    def verdict(self) -> str:
        if not self.reports:
            return "no report"
        r = self.reports[-1]
        g = r.get("golden") or {}
        return (
            f"ok={r.get('ok')}: {r['model']['name']} v{r['model']['version']}, signature verified "
            f"{r.get('signature_verified')}, golden samples {g.get('n')} on {r.get('backend')} "
            f"(max score error {g.get('max_score_error', 0):.1e}, map {g.get('max_map_error', 0):.1e})"
        )


def refresh_outcome(log: Path) -> dict[str, Any]:
    """What the refresh job's last JSON line says: outcome, versions, gate, metrics, kind of export."""
    try:
        lines = [line for line in log.read_text().splitlines() if line.strip()]
        record = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        record = None
    if not record:
        return {}
    return {
        "outcome": record.get("outcome"),
        "versions": record.get("versions"),
        "gate": (record.get("gate") or {}).get("passed"),
        "metrics": record.get("metrics"),
        "export": (record.get("drop") or {}).get("export"),
    }


def write_edge_config(
    path: Path, *, outbox: Path, public_key: Path, site: str, line: str, station: str
) -> Path:
    """The edge's TOML for the demo: every frame published, signed bundles only, fast polling."""
    path.write_text(
        "\n".join(
            [
                "[topic]", f'site = "{site}"', f'line = "{line}"', f'station = "{station}"',
                "[publish]", 'mode = "every_frame"',
                "[outbox]", f'path = "{outbox}"',
                "[metrics]", "port = 0", 'host = "127.0.0.1"', "period_s = 5",
                "[reload]", "watch_interval_s = 0.5", f'key = "{public_key}"', "require_signature = true",
                "[camera]", "dir_poll_s = 0.05", "dir_settle_s = 0",
                "[watchdog]", "enabled = false",
            ]
        )
        + "\n"
    )  # fmt: skip
    return path


def write_refresh_config(
    path: Path,
    d: dict[str, Path],
    *,
    port: int,
    topic_root: str,
    gate: dict[str, float],
    confirm_timeout_s: float,
) -> Path:
    """`linewatch-refresh`'s TOML for the demo's folders `d` (see deploy/refresh/refresh.example.toml)."""
    path.write_text(f"""# linewatch-refresh configuration written by the demo (see deploy/refresh/refresh.example.toml)
run_dir   = "{d["run"]}"
data      = "mvtec:{d["dataset"]}"
drop_dir  = "{d["drop"]}"
sign_key  = "{d["keys"] / "linewatch.key"}"
log_path  = "{d["work"] / "refresh.jsonl"}"
lock_path = "{d["work"] / "refresh.lock"}"
python    = "{sys.executable}"

[store]
dir = "{d["store"]}"
keep = 5

[gate]
metric = "image_auroc"
max_drop = {gate["max_drop"]:g}
new_task_floor = {gate["new_task_floor"]:g}
baseline = "run"  # the run's own metrics.json is fresh here: it saves one evaluation

[mqtt]
url = "mqtt://127.0.0.1:{port}"
topic_root = ["{topic_root}"]
confirm_timeout_s = {confirm_timeout_s:g}

[steps]
drop_settle_s = 0
""")
    return path


def prepare_out(out: Path, marker: str, folders: Iterable[Path]) -> None:
    """A fresh working folder: wiped when an earlier demo made it (it holds `marker`), refused otherwise."""
    if out.exists() and any(out.iterdir()):
        if not (out / marker).exists():
            raise UsageError(f"{out} exists and was not made by the demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / marker).write_text("made by python -m linewatch.deploy.demo; removed by the next demo run\n")
    for path in folders:
        path.mkdir(parents=True, exist_ok=True)


def _terminate(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_guarded(run: Callable[[], int]) -> int:
    """Run the demo with SIGTERM handled like Ctrl-C (children stopped); map failures to exit codes.

    0: every check passed, 1: a step or a check failed, 2: bad usage, 130: interrupted.
    """
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        return run()
    except UsageError as exc:
        say(f"demo: {exc}")
        return 2
    except DemoError as exc:
        say(f"\ndemo FAILED: {exc}")
        return 1
    except KeyboardInterrupt:
        say("\ndemo interrupted; the broker and the edge were stopped")
        return 130
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
