"""Onboard or remove a part on the box: a new bank-only bundle version in the store, signed by the box.

Sequence (`onboard`): open the store's current bundle under the box's trust policy -> check it is a
few-shot bundle and the box key is allowed -> read the support images (support.py) -> build the
task's slot (bank.py) -> recompute the golden samples (the current bundle's frames plus up to two
support images) with the scoring graph and the new arrays -> write `<name>-v<next>` through
`contract/manifest.py` into a hidden folder of the store, signed with the box key -> verify it
with the same `open_bundle` policy the model manager uses -> rename it into place and point
`current` at it. The model manager then hot-swaps it (store watching or a direct `reload`). Any
failure leaves the store's `current` and the serving model as they were.

Slots: a task name already present replaces its slot; a new one takes the first empty slot;
`remove` empties a slot. Other slots are copied untouched, so earlier tasks score exactly as before
(task inference can only change where the new task is now the nearest).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.errors import BundleError
from linewatch.contract.fewshot import EMBED_NAME, EMPTY_FILL, EMPTY_TASK, SECTION, FewShotSection
from linewatch.contract.geometry import Geometry
from linewatch.contract.manifest import (
    MODEL_NAME,
    new_manifest,
    utc_now,
    write_data_inputs,
    write_golden,
    write_manifest,
)
from linewatch.contract.store import bundle_dirname, is_store, point_current, store_target, versions_of
from linewatch.edge.model import signing
from linewatch.edge.model.bundle import Bundle, open_bundle
from linewatch.edge.onboard.bank import BankBuilder, golden_outputs, session
from linewatch.edge.onboard.support import OnboardError, model_inputs

log = logging.getLogger(__name__)
MAX_GOLDEN = 8


@dataclass
class Policy:
    """How bundles are verified (the edge's `[reload]`) and what the box signs with (`[onboard] key`)."""

    release_key: Path | None = None
    box_keys: Sequence[Path] = ()
    require_signature: bool = False
    sign_key: Path | None = None
    threads: int | None = None

    def open(self, path: Path, base: Bundle | None = None) -> Bundle:
        return open_bundle(
            path,
            key=self.release_key,
            require_signature=self.require_signature,
            base=base,
            box_keys=self.box_keys if self.release_key else (),
        )

    def signer(self) -> Any:
        """The box's signer; refuses a key the policy would not accept (before any work is done)."""
        if self.sign_key is None:
            if self.release_key is not None or self.require_signature:
                raise OnboardError("bundles must be signed here: set [onboard] key to this box's private key")
            return None
        try:
            key = signing.load_key(self.sign_key)
            allowed = {signing.load_key(k).key_id for k in self.box_keys}
        except signing.SignatureError as e:
            raise OnboardError(f"box key: {e}") from e
        if not key.can_sign:
            raise OnboardError(f"{self.sign_key} is a public key; the box signs with its private key")
        if self.release_key is not None and key.key_id not in allowed:
            raise OnboardError(f"box key {key.key_id} is not allowed by reload.box_keys; nothing was changed")
        return signing.signer(key)


@dataclass
class Onboarded:
    """The new version and what it took (the cmd/onboard response's result)."""

    path: Path
    version: int
    task: str | None
    slot: int | None
    tasks: list[str]
    seconds: float
    details: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "bundle": self.path.name,
            "version": self.version,
            "task": self.task,
            "slot": self.slot,
            "tasks": self.tasks,
            "seconds": round(self.seconds, 3),
            **self.details,
        }


def _current(store: Path, policy: Policy) -> tuple[Bundle, Bundle, FewShotSection]:
    if not is_store(store):
        raise OnboardError(f"{store} is not a bundle store (no 'current' link)")
    try:
        bundle = policy.open(store_target(store))
    except (BundleError, OSError) as e:
        raise OnboardError(f"the current bundle is refused: {e}") from e
    base = bundle.base or bundle
    if SECTION not in bundle.manifest or EMBED_NAME not in base.manifest["files"]:
        raise OnboardError(f"{bundle.name} v{bundle.version} is not a few-shot bundle (no {SECTION} section)")
    try:
        return bundle, base, FewShotSection.model_validate(bundle.manifest[SECTION])
    except ValueError as e:
        raise OnboardError(f"the bundle's {SECTION} section is malformed: {e}") from e


def _publish(
    store: Path,
    bundle: Bundle,
    base: Bundle,
    policy: Policy,
    sign: Any,
    score_sess: Any,
    tasks: list[str],
    data: dict[str, np.ndarray],
    golden_frames: np.ndarray,
    record: dict[str, Any],
) -> tuple[Path, int]:
    """Write, sign, verify and publish the new bank-only version; `current` moves last."""
    version = max(versions_of(store, bundle.name), default=bundle.version) + 1
    out = store / bundle_dirname(bundle.name, version)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=store))
    try:
        entries = write_data_inputs(tmp, data)
        outputs = golden_outputs(score_sess, data, golden_frames, bundle.max_batch)
        golden = write_golden(
            tmp,
            golden_frames,
            outputs,
            atol_score=bundle.golden.atol_score,
            atol_map=bundle.golden.atol_map,
            source="onboarded on the box: the previous version's frames and support images",
        )
        m = bundle.manifest
        keep = {
            k: v for k, v in m.items() if k in ("strategy", "backbone", "method_metadata", "refit", SECTION)
        }
        provenance = {**(m.get("provenance") or {}), "onboard": record}
        calibration = {**(m.get("calibration") or {}), "slots": tasks}
        calibration.update(center=data["center"].tolist(), scale=data["scale"].tolist())
        manifest = new_manifest(
            name=bundle.name,
            version=version,
            method=m["method"],
            tasks=tasks,
            input_hw=bundle.input_hw,
            max_batch=bundle.max_batch,
            data_inputs=entries,
            golden=golden,
            geometry=m.get("geometry"),
            **keep,
            calibration=calibration,
            provenance=provenance,
            bank_only={"base_version": base.version, "graph_sha256": base.graph_sha256},
        )
        write_manifest(tmp, manifest, sign)
        try:
            policy.open(tmp, base=base)
        except BundleError as e:
            raise OnboardError(f"the onboarded bundle does not pass this box's own checks: {e}") from e
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    point_current(store, out.name)
    return out, version


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """One onboarding per store at a time (the CLI and a running edge's cmd/onboard may race)."""
    if not Path(store).is_dir():
        raise OnboardError(f"{store} is not a bundle store (no such folder)")
    with open(Path(store) / ".onboard.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def onboard(store: Path, task: str, images: list[np.ndarray], policy: Policy, seed: int = 0) -> Onboarded:
    """Build `task`'s slot from support images and publish a new version (see the module docstring)."""
    with _locked(store):
        return _onboard(Path(store), task, images, policy, seed)


def remove(store: Path, task: str, policy: Policy) -> Onboarded:
    """Empty `task`'s slot and publish a new version."""
    with _locked(store):
        return _remove(Path(store), task, policy)


def _onboard(store: Path, task: str, images: list[np.ndarray], policy: Policy, seed: int) -> Onboarded:
    t0 = time.perf_counter()
    task = task.strip()
    if not task:
        raise OnboardError("task name must not be empty")
    sign = policy.signer()
    bundle, base, section = _current(Path(store), policy)
    geometry = Geometry.from_dict(bundle.manifest.get("geometry"), bundle.input_hw)
    frames = model_inputs(images, geometry)
    tasks = list(bundle.tasks)
    slot = tasks.index(task) if task in tasks else (tasks.index(EMPTY_TASK) if EMPTY_TASK in tasks else None)
    if slot is None:
        raise OnboardError(
            f"all {len(tasks)} task slots are taken: remove a part or re-export with more slots"
        )
    data = {k: np.array(v, copy=True) for k, v in bundle.data_inputs.items()}
    builder = BankBuilder(
        section, base.root / EMBED_NAME, base.root / MODEL_NAME, data, bundle.max_batch, policy.threads
    )
    built = builder.build(frames, slot, seed)
    data["bank"][slot], data["bank_knn"][slot] = built.bank, built.knn
    data["center"][slot], data["scale"][slot] = built.center, built.scale
    replaced = tasks[slot] == task
    tasks[slot] = task
    golden = np.concatenate([bundle.golden.inputs, frames[:2]])[-MAX_GOLDEN:]
    record = {
        "task": task,
        "slot": slot,
        "images": len(images),
        "replaced": replaced,
        "at": utc_now(),
        "seed": seed,
        "previous_version": bundle.version,
        "center": built.center,
        "scale": built.scale,
        "holdout_raw_scores": [round(v, 5) for v in built.holdout_raw],
        "seconds": built.seconds,
    }
    path, version = _publish(
        Path(store), bundle, base, policy, sign, builder.score, tasks, data, golden, record
    )
    log.info("part onboarded", extra={"task": task, "slot": slot, "version": version})
    return Onboarded(
        path,
        version,
        task,
        slot,
        tasks,
        time.perf_counter() - t0,
        {
            "replaced": replaced,
            "calibration": {"center": built.center, "scale": built.scale},
            "timing": built.seconds,
        },
    )


def _remove(store: Path, task: str, policy: Policy) -> Onboarded:
    t0 = time.perf_counter()
    sign = policy.signer()
    bundle, base, _section = _current(Path(store), policy)
    tasks = list(bundle.tasks)
    if task not in tasks or task == EMPTY_TASK:
        raise OnboardError(
            f"no task {task!r} in {bundle.name} v{bundle.version} (tasks: {[t for t in tasks if t]})"
        )
    slot = tasks.index(task)
    data = {k: np.array(v, copy=True) for k, v in bundle.data_inputs.items()}
    data["bank"][slot] = EMPTY_FILL
    data["center"][slot], data["scale"][slot] = 1.0, 1.0
    tasks[slot] = EMPTY_TASK
    record = {"removed": task, "slot": slot, "at": utc_now(), "previous_version": bundle.version}
    score_sess = session(base.root / MODEL_NAME, policy.threads)
    path, version = _publish(
        Path(store), bundle, base, policy, sign, score_sess, tasks, data, bundle.golden.inputs, record
    )
    return Onboarded(path, version, None, slot, tasks, time.perf_counter() - t0, {"removed": task})
