"""Rolling latency windows and rate meters for the metrics topic.

Prometheus histograms answer "what happened over time"; SCADA wants "p50/p99 right now" on the
metrics topic, so each stage also keeps its last N samples here.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np

STAGES = ("capture", "queue", "preprocess", "infer", "postprocess", "publish", "end_to_end")


class LatencyWindow:
    """The last ``size`` samples (milliseconds) of one stage."""

    def __init__(self, size: int = 2048) -> None:
        self._samples: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        with self._lock:
            self._samples.append(ms)

    def percentiles(self) -> dict[str, float | None]:
        with self._lock:
            data = np.fromiter(self._samples, dtype=np.float64, count=len(self._samples))
        if data.size == 0:
            return {"p50": None, "p99": None, "n": 0}
        p50, p99 = np.percentile(data, [50, 99])
        return {"p50": round(float(p50), 3), "p99": round(float(p99), 3), "n": int(data.size)}


class RateMeter:
    """Events per second since the previous ``rate()`` call (the metrics period)."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()
        self._since = time.monotonic()

    def tick(self, n: int = 1) -> None:
        with self._lock:
            self._count += n

    def rate(self) -> tuple[float, int]:
        """(events per second, events) over the period just ended; starts a new period."""
        with self._lock:
            now = time.monotonic()
            count, elapsed = self._count, max(now - self._since, 1e-9)
            self._count, self._since = 0, now
        return count / elapsed, count
