"""A throwaway mosquitto on a loopback port: the one kit the demo, the tests and the benchmarks use.

Why one: three launchers and three ``free_port`` functions had drifted; only one picked ports outside
the kernel's ephemeral range. That matters whenever a broker is stopped and started again on the
same port while clients keep reconnecting: a port in the ephemeral range can meanwhile be taken as
some outgoing connection's source port (even a TCP self-connection to 127.0.0.1:port), and the
broker could not bind it again.

Why ``deploy/``: the demo (``python -m linewatch.deploy.demo``) starts a broker and ships in the package, so
the kit cannot live under ``tests/``; it is not ``contract/`` either, because the edge never starts
a broker (it only connects to one).
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

HOST = "127.0.0.1"


def mosquitto_binary() -> str | None:
    """The mosquitto executable (PATH, else Debian's /usr/sbin), or None when it is not installed."""
    return shutil.which("mosquitto") or (
        "/usr/sbin/mosquitto" if os.path.exists("/usr/sbin/mosquitto") else None
    )


MOSQUITTO = mosquitto_binary()


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' source ports."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def free_port() -> int:
    """A free loopback port OUTSIDE the ephemeral range (see the module docstring)."""
    low, high = ephemeral_range()
    candidates = [p for p in range(20000, 32000) if not low <= p <= high] or list(range(1025, low))
    rng = random.Random(os.getpid() ^ time.monotonic_ns())
    for port in rng.sample(candidates, min(200, len(candidates))):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((HOST, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def accepting(port: int, host: str = HOST) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class LocalBroker:
    """A mosquitto process with its own config and log in ``workdir``, on one fixed port.

    The generated config is anonymous or not (``anonymous``), with ``extra`` lines after the
    listener (TLS files, a password file) and, with ``persistence``, a persistence file in
    ``workdir`` so that QoS 1 messages queued for persistent sessions survive ``restart()``.
    ``config`` replaces the generated text entirely (it must listen on ``port``).
    """

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        extra: Sequence[str] = (),
        anonymous: bool = True,
        persistence: bool = False,
        config: str | None = None,
        log: Path | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.host = HOST
        self.port = port or free_port()
        self.config = self.workdir / "mosquitto.conf"
        self.log = log or self.workdir / "mosquitto.log"
        self.config.write_text(
            config if config is not None else self._generated(extra, anonymous, persistence)
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def _generated(self, extra: Sequence[str], anonymous: bool, persistence: bool) -> str:
        lines = [
            f"listener {self.port} {self.host}",
            *extra,
            f"allow_anonymous {'true' if anonymous else 'false'}",
        ]
        if persistence:
            lines += ["persistence true", f"persistence_location {self.workdir}/", "autosave_interval 1"]
        else:
            lines.append("persistence false")
        lines += ["max_queued_messages 0", "log_dest stderr"]
        lines += ["log_type error", "log_type warning", "log_type notice"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            lines.append("user root")  # as root it would drop to a `mosquitto` user that cannot read workdir
        return "\n".join(lines) + "\n"

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-10:])
        return ""

    def start(self, timeout_s: float = 60.0) -> LocalBroker:
        """Start and wait until the port accepts connections (retrying while an old socket lingers)."""
        binary = mosquitto_binary()
        if binary is None:
            raise RuntimeError("mosquitto is not installed (`make mosquitto` installs it)")
        deadline = time.monotonic() + timeout_s
        while True:
            with open(self.log, "ab") as log:  # mosquitto logs to stderr: into the log file, never a pipe
                self.proc = subprocess.Popen(
                    [binary, "-c", str(self.config)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                )
            start_deadline = min(deadline, time.monotonic() + 20)
            while time.monotonic() < start_deadline and self.proc.poll() is None and not accepting(self.port):
                time.sleep(0.05)
            if self.proc.poll() is None and accepting(self.port):
                return self
            self._kill()
            if time.monotonic() > deadline:
                raise RuntimeError(f"mosquitto did not start on port {self.port}: {self._tail()}")
            time.sleep(0.5)

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
        if self.proc is not None:
            self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (mosquitto saves its persistence file), then wait until the port is closed."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self._kill()
        self.proc = None
        deadline = time.monotonic() + 20
        while accepting(self.port):
            if time.monotonic() > deadline:
                raise RuntimeError(f"port {self.port} still accepts connections 20 s after mosquitto stopped")
            time.sleep(0.05)

    def restart(self, down_s: float = 0.0) -> None:
        """Stop and start on the same port (persistent sessions keep their queued messages)."""
        self.stop()
        if down_s:
            time.sleep(down_s)
        self.start()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
