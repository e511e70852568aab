"""Structured logs: one JSON object per line, so journald/Loki can filter on fields; repeats summarised.

Callers attach fields with ``logger.info("msg", extra={"camera": "cam0"})``; every non-standard
attribute of the record becomes a key.

Why repeats are rate-limited: a fault that lasts hours (broker gone, camera unplugged, a folder of
corrupt images) must not write a line per retry or per frame. Issue 17 measured 3,000 "broker
unreachable" lines a second; that floods journald, evicts the lines that explain the fault and costs
CPU on a small box. ``RepeatLimiter`` writes the first occurrence of an event at once, then at most
one summary line per ``repeat_every_s`` saying how many were held back, and a last summary when the
fault ends (``flush``). Counters (Prometheus, stats) are kept by the callers and still count every
event: only the log lines are thinned. ``RepeatFilter`` applies the same rule to records of third-party
loggers (paho) that we cannot call through the limiter.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
DEFAULT_REPEAT_EVERY_S = 60.0
_repeat_every_s = DEFAULT_REPEAT_EVERY_S


class JsonFormatter(logging.Formatter):
    """Render a record as a single JSON line with ts, level, logger, msg and any extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def setup_logging(
    level: str = "INFO", json_lines: bool = True, repeat_every_s: float = DEFAULT_REPEAT_EVERY_S
) -> None:
    """Configure the root logger once for the process (stderr, which systemd captures)."""
    set_repeat_every(repeat_every_s)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter()
        if json_lines
        else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


def set_repeat_every(seconds: float) -> None:
    """The process-wide summary period of every limiter that was not given its own."""
    global _repeat_every_s
    if not seconds > 0:
        raise ValueError("repeat_every_s must be > 0")
    _repeat_every_s = float(seconds)


@dataclass
class _Run:
    """One event's run of repeats: when its current window began and how many it held back."""

    window_start: float
    held: int = 0
    total: int = 1


class _Runs:
    """The bookkeeping shared by the limiter and the filter: first, then one summary per window."""

    def __init__(self, every_s: float | None, clock: Callable[[], float]) -> None:
        self._every_s, self._clock = every_s, clock
        self._runs: dict[Hashable, _Run] = {}
        self._lock = threading.Lock()

    @property
    def every_s(self) -> float:
        return self._every_s if self._every_s is not None else _repeat_every_s

    def hit(self, key: Hashable) -> tuple[bool, int, float]:
        """(write a line?, events it stands for beyond the first, seconds the summary covers)."""
        now = self._clock()
        with self._lock:
            run = self._runs.get(key)
            if run is None:
                self._runs[key] = _Run(now)
                return True, 0, 0.0
            run.total += 1
            elapsed = now - run.window_start
            if elapsed < self.every_s:
                run.held += 1
                return False, 0, 0.0
            count = run.held + 1 if run.held else 0  # nothing held: a plain line, not "repeated 1 times"
            run.window_start, run.held = now, 0
            return True, count, elapsed

    def flush(self, match: Callable[[Hashable], bool]) -> list[tuple[Hashable, int, float]]:
        """Take the held-back counts of the runs whose key matches: (key, held, seconds they span).

        The runs stay, with a new window starting now: a fault that comes back at once is still
        rate-limited (at most two lines per period per event: a summary and a flush).
        """
        now = self._clock()
        out = []
        with self._lock:
            for k, run in self._runs.items():
                if match(k) and run.held:
                    out.append((k, run.held, now - run.window_start))
                    run.window_start, run.held = now, 0
        return out


def _summary(msg: str, count: int, seconds: float) -> str:
    return f"{msg} (repeated {count} times in {seconds:.0f} s)"


class RepeatLimiter:
    """Log repeated events as: the first at once, then one summary line per period, then a last one.

    An event is identified by its message and a ``key`` (usually the camera): the same failure of two
    cameras is two events. Thread-safe.
    """

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``every_s`` None follows ``[logging] repeat_every_s`` (``set_repeat_every``)."""
        self.logger = logger
        self._runs = _Runs(every_s, clock)
        self.suppressed = 0  # lines held back, for tests and the curious

    @property
    def every_s(self) -> float:
        return self._runs.every_s

    def log(
        self,
        level: int,
        msg: str,
        key: Hashable = None,
        extra: dict[str, Any] | None = None,
        exc_info: bool = False,
    ) -> bool:
        """Log ``msg`` unless it repeats within the period; True when a line was written."""
        write, count, seconds = self._runs.hit((msg, key))
        if not write:
            self.suppressed += 1
            return False
        fields = dict(extra or {})
        text = msg
        if count:
            text = _summary(msg, count, seconds)
            fields.update(repeated=count, over_s=round(seconds, 1))
        self.logger.log(level, text, extra=fields, exc_info=exc_info)
        return True

    def warning(self, msg: str, key: Hashable = None, **extra: Any) -> bool:
        return self.log(logging.WARNING, msg, key, extra)

    def error(self, msg: str, key: Hashable = None, **extra: Any) -> bool:
        return self.log(logging.ERROR, msg, key, extra)

    def info(self, msg: str, key: Hashable = None, **extra: Any) -> bool:
        return self.log(logging.INFO, msg, key, extra)

    def flush(self, key: Hashable = None, level: int = logging.INFO, **extra: Any) -> int:
        """The fault behind ``key``'s events is over (reconnected, reopened): write one summary line per
        event of ``key`` that has repeats held back, so the count is not lost. Returns the lines written.
        """
        flushed = self._runs.flush(lambda k: k[1] == key)
        for (msg, _), held, seconds in flushed:
            fields = {**extra, "repeated": held, "over_s": round(seconds, 1)}
            self.logger.log(level, _summary(msg, held, seconds), extra=fields)
        return len(flushed)


class RepeatFilter(logging.Filter):
    """The limiter's rule for a logger we do not call ourselves: records keyed by their format string.

    A held-back record is dropped; the record that closes a period carries the count in its message.
    """

    def __init__(self, every_s: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._runs = _Runs(every_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True  # debug chatter is filtered by level anyway; only rate-limit what is shown
        write, count, seconds = self._runs.hit((record.name, str(record.msg)))
        if write and count:
            record.msg = _summary(record.getMessage(), count, seconds)
            record.args = None
            record.repeated = count
        return write


def install_repeat_filter(logger: logging.Logger) -> None:
    """Attach one RepeatFilter to ``logger`` (idempotent)."""
    if not any(isinstance(f, RepeatFilter) for f in logger.filters):
        logger.addFilter(RepeatFilter())
