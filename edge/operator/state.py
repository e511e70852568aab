"""The JSON the operator page reads: per-camera verdicts and counters, the gallery, the model history.

Counters come from the runtime's own records (camera counts, queue and outbox drops, the latency
windows); they are computed at most once a second and shared by every viewer, because percentiles and
the outbox depth (a SQLite query) are not free. The model history reads the bundle store's manifests
(``contract/store.bundles_in``), the swaps this process made, and, when configured, the refresh log's
gate decisions. Nothing here names a file system path: the page must not learn where things live.
"""

from __future__ import annotations

import json
import re
import threading
import time
from pathlib import Path
from typing import Any

from linewatch.contract.store import bundles_in
from linewatch.edge.operator.live import LiveView

COUNTER_PERIOD_S = 1.0
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^/\s:'\"]+)+/?")


def redact(text: str | None) -> str | None:
    """A message for the page with every absolute path cut to its last part (a refused bundle's error
    names where the store is; the page may not)."""
    if text is None:
        return None
    return _PATH.sub(lambda m: "…/" + m.group(0).rstrip("/").rsplit("/", 1)[-1], text)


class PageState:
    """Builds what the page shows from a running ``EdgeRuntime`` and its ``LiveView``."""

    def __init__(self, runtime: Any, live: LiveView, refresh_log: Path | None = None) -> None:
        self.rt, self.live, self.refresh_log = runtime, live, refresh_log
        self.swaps: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counters: dict[str, Any] = {}
        self._counted_at = 0.0
        self._fps_mark: dict[str, tuple[float, int]] = {}

    def model_swapped(self, name: str, version: int, backend: str) -> None:
        with self._lock:
            self.swaps.append({"name": name, "version": version, "backend": backend, "ts": time.time()})
            del self.swaps[:-50]

    def _camera_counters(self, cam: Any, now: float) -> dict[str, Any]:
        rt = self.rt
        windows = rt.telemetry.camera(cam.name)
        last = self._fps_mark.get(cam.name)
        fps = (cam.results - last[1]) / max(now - last[0], 1e-6) if last else 0.0
        self._fps_mark[cam.name] = (now, cam.results)
        link = cam.link
        return {
            "frames": cam.results,
            "anomalies": cam.anomalies,
            "fps": round(fps, 2),
            "drops": {"frames": cam.queue.dropped, "bad_frames": sum(cam.source.stats.bad_frames.values())},
            "latency_ms": {s: windows.stages[s].percentiles() for s in ("infer", "end_to_end")},
            "broker_connected": bool(link and link.connected.is_set()),
            "outbox_depth": rt.outbox.depth(cam.name),
        }

    def counters(self) -> dict[str, Any]:
        """Shared, refreshed at most once per ``COUNTER_PERIOD_S``."""
        with self._lock:
            now = time.monotonic()
            if now - self._counted_at >= COUNTER_PERIOD_S or not self._counters:
                rt = self.rt
                model = rt.models.loaded
                self._counters = {
                    "cameras": {c.name: self._camera_counters(c, now) for c in rt.cameras},
                    "drops": {
                        "results": rt.results.dropped,
                        "outbox": rt.outbox.dropped,
                        "outbox_not_stored": rt.outbox.not_stored,
                    },
                    "outbox": {"depth": rt.outbox.depth(), "healthy": rt.outbox.healthy},
                    "backend": model.backend_name if model else None,
                    "model": model.ref() if model else None,
                    "model_error": redact(rt.models.last_error),
                }
                self._counted_at = now
            return self._counters

    def snapshot(self) -> dict[str, Any]:
        latest, gallery = self.live.snapshot()
        return {"ts": time.time(), "latest": latest, "gallery": gallery, **self.counters()}

    # ----- model history --------------------------------------------------------------------------
    def _gates(self) -> dict[int, dict[str, Any]]:
        """Gate decisions of published refreshes, by the version they produced."""
        if self.refresh_log is None or not self.refresh_log.is_file():
            return {}
        found: dict[int, dict[str, Any]] = {}
        for line in self.refresh_log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                rec = json.loads(line)
                version = (rec.get("versions") or {}).get("after")
            except (json.JSONDecodeError, AttributeError):
                continue
            if isinstance(version, int) and rec.get("gate"):
                gate = rec["gate"]
                found[version] = {
                    "passed": bool(gate.get("passed")),
                    "outcome": rec.get("outcome"),
                    "checks": [c.get("message", "") for c in gate.get("checks", [])],
                    "drop": {k: rec.get("drop", {}).get(k) for k in ("added_images", "new_tasks")},
                    "finished": rec.get("finished"),
                }
        return found

    def models(self) -> list[dict[str, Any]]:
        """Every version in the store (or the one loaded bundle), newest first."""
        mgr = self.rt.models
        live = mgr.loaded
        entries: list[dict[str, Any]] = []
        if mgr.store is not None:
            for _path, manifest in bundles_in(mgr.store):
                entries.append(manifest)
        elif live is not None:
            entries.append(live.bundle.manifest)
        gates = self._gates()
        with self._lock:
            swaps = list(self.swaps)
        rows: list[dict[str, Any]] = []
        entries.sort(key=lambda m: int((m.get("model") or {}).get("version", -1)))
        previous: list[str] = []
        for m in entries:
            model = m.get("model") or {}
            tasks = [str(t) for t in m.get("tasks", [])]
            version = model.get("version")
            added = [t for t in tasks if t not in previous]
            rows.append({
                "name": model.get("name"),
                "version": version,
                "created": m.get("created"),
                "method": m.get("method"),
                "tasks": tasks,
                "added": added,
                "bank_only": bool(m.get("bank_only")),
                "gate": gates.get(version) if isinstance(version, int) else None,
                "swapped": [s["ts"] for s in swaps if s["version"] == version and s["name"] == model.get("name")],
                "live": bool(live and live.version == version and live.name == model.get("name")),
            })  # fmt: skip
            previous = tasks
        return rows[::-1]
