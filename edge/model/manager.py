"""Hot model swap: a new bundle is verified and warmed up beside the running one, then swapped in.

Sequence for every load (first start, a store's ``current`` changing, or a ``reload`` command):
open + verify (hashes, signature when a key is configured), choose a backend and prove it on the
golden samples, warm it up; only then is the reference the inference thread reads swapped. The
inference thread picks the model up at its next batch, so the swap happens between two frames and
no frame goes without a result. On any failure the old model keeps serving, the failure is counted,
logged and handed to ``on_failure`` (which publishes it on ``status``).

Bundle store layout (``contract/store.py``, written by the refresh job): ``<store>/<name>-v<version>/``
plus a ``current`` symlink replaced atomically. In store mode the target of ``current`` is polled.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from linewatch.contract.store import CURRENT, is_hidden, is_store, store_target
from linewatch.edge.config import EdgeConfig
from linewatch.edge.inference.backends import Backend, select_backend
from linewatch.edge.model.bundle import Bundle, BundleError, GoldenReport, open_bundle

log = logging.getLogger(__name__)

__all__ = ["CURRENT", "LoadedModel", "ModelManager", "is_store", "store_target"]


@dataclass
class LoadedModel:
    """A verified bundle with its proven, warmed-up backend."""

    bundle: Bundle
    backend: Backend
    report: GoldenReport
    target: Path
    generation: int

    @property
    def name(self) -> str:
        return self.bundle.name

    @property
    def version(self) -> int:
        return self.bundle.version

    @property
    def backend_name(self) -> str:
        return self.backend.name

    def ref(self) -> dict[str, object]:
        return {"name": self.name, "version": self.version}


class ModelManager:
    """Holds the live model; loads, verifies and swaps new ones without stopping inference."""

    def __init__(
        self,
        source: Path,
        cfg: EdgeConfig,
        on_change: Callable[[LoadedModel], None] | None = None,
        on_failure: Callable[[str], None] | None = None,
        backend_order: list[str] | None = None,
    ) -> None:
        self.source = Path(source)
        self.store = self.source if is_store(self.source) else None
        self.cfg = cfg
        self.backend_order = backend_order
        self.on_change, self.on_failure = on_change, on_failure
        self.reload_failures = 0
        self.swaps = 0
        self.last_error: str | None = None
        self._current: LoadedModel | None = None
        self._retired: list[LoadedModel] = []
        self._load_lock = threading.Lock()
        self._retired_lock = threading.Lock()
        self._stop = threading.Event()
        self._failed_target: Path | None = None
        self._generation = 0
        self._watcher: threading.Thread | None = None

    # ----- used by the inference thread -------------------------------------------------------
    def current(self) -> LoadedModel:
        """The live model. Called between batches, which is also when retired models are closed."""
        if self._retired:
            with self._retired_lock:
                retired, self._retired = self._retired, []
            for old in retired:
                try:
                    old.backend.close()
                except Exception:
                    log.exception("closing a retired backend failed")
        model = self._current
        if model is None:
            raise RuntimeError("no model loaded")
        return model

    @property
    def loaded(self) -> LoadedModel | None:
        return self._current

    # ----- loading -------------------------------------------------------------------------------
    def target(self) -> Path:
        return store_target(self.store) if self.store is not None else self.source

    def _load(self, target: Path) -> LoadedModel:
        rcfg = self.cfg.reload
        bundle = open_bundle(
            target, key=rcfg.key, require_signature=rcfg.require_signature, box_keys=rcfg.box_keys
        )
        selection = select_backend(bundle, self.cfg.backend, self.backend_order)
        self._generation += 1
        return LoadedModel(bundle, selection.backend, selection.report, target, self._generation)

    def load_initial(self) -> LoadedModel:
        """First load at start; raises (BundleError, BackendUnavailable, OSError) so the CLI can exit."""
        with self._load_lock:
            model = self._load(self.target())
            self._current = model
        log.info(
            "model live", extra={"model": model.name, "version": model.version, "backend": model.backend_name}
        )
        return model

    def reload(self, path: Path | str | None = None) -> LoadedModel:
        """Load ``path`` (default: the store's current target / the original bundle) and swap it in.

        Raises on failure AFTER recording it (counter, last_error, on_failure); the old model stays.
        """
        with self._load_lock:
            try:
                target = Path(path) if path is not None else self.target()
                if self.store is not None and path is None and is_hidden(target.name):
                    raise BundleError(
                        "manifest", "store's current points at a hidden (incomplete) entry", target
                    )
                model = self._load(target)
            except Exception as exc:  # whatever went wrong, the old model keeps serving
                self.reload_failures += 1
                self.last_error = str(exc)
                log.error("model reload refused; previous model keeps serving", extra={"error": str(exc)})
                if self.on_failure is not None:
                    self.on_failure(str(exc))
                raise
            old = self._current
            if old is not None and model.version < old.version:
                log.warning(
                    "model version decreased (rollback?)", extra={"old": old.version, "new": model.version}
                )
            self._current = model  # the swap: the inference thread sees it at its next batch
            if old is not None:
                with self._retired_lock:
                    self._retired.append(old)
            self.swaps += 1
            self.last_error = None
            self._failed_target = None
        log.info(
            "model swapped",
            extra={"model": model.name, "version": model.version, "backend": model.backend_name},
        )
        if self.on_change is not None:
            self.on_change(model)
        return model

    # ----- store watching ---------------------------------------------------------------------
    def start_watching(self) -> None:
        if self.store is None or self._watcher is not None:
            return
        self._watcher = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        assert self.store is not None
        while not self._stop.wait(self.cfg.reload.watch_interval_s):
            try:
                target = store_target(self.store)
            except OSError:
                continue  # mid-replacement or dangling: look again next tick
            live = self._current.target if self._current is not None else None
            if target == live or target == self._failed_target or is_hidden(target.name):
                continue
            log.info("store current changed", extra={"target": str(target)})
            try:
                self.reload(target)
            except Exception:
                self._failed_target = target  # retry only when current moves again (or on command)

    def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
        model = self._current
        self._current = None
        for m in [*self._retired, *([model] if model else [])]:
            try:
                m.backend.close()
            except Exception:
                log.exception("closing backend failed")
        self._retired = []
