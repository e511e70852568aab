"""Which TensorRT plan fits this machine, and where the plans a box built are kept.

Apart from `trt_build` (which builds and refits with TensorRT) because none of this needs
TensorRT: the exporter names plans, the box picks a bundled or cached plan, the tests check the
rules, all on machines without a GPU. A plan runs only on the TensorRT version and GPU it was
built for, so a plan's name and its JSON sidecar (`<plan>.json`) record both, with the sha256 of
the graph it was built from and of the plan itself. Cached plans live in the model's engine cache
of the store (`contract.store.engine_cache_dir`), one sub-folder per graph hash.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from linewatch.contract.manifest import sha256_file

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class RuntimeInfo:
    """What a plan is tied to: the exact TensorRT version and the GPU."""

    tensorrt_version: str
    gpu_name: str
    compute_capability: str  # "8.7" for Jetson Orin, "9.0" for H100

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def plan_filename(precision: str, gpu: str | RuntimeInfo, trt_version: str | None = None) -> str:
    """`engine.<precision>.<gpu-slug>.trt<version>.plan`: unique per precision, GPU and TensorRT."""
    if isinstance(gpu, RuntimeInfo):
        trt_version = trt_version or gpu.tensorrt_version
        gpu = gpu.gpu_name
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if not trt_version:
        raise ValueError("trt_version is required")
    return f"engine.{precision}.{_slug(gpu)}.trt{_slug(trt_version).replace('-', '.')}.plan"


def _info_fields(info: RuntimeInfo | Mapping[str, Any]) -> tuple[str, str, str]:
    if isinstance(info, RuntimeInfo):
        return info.tensorrt_version, info.gpu_name, info.compute_capability
    return str(info["tensorrt_version"]), str(info["gpu_name"]), str(info["compute_capability"])


def engine_matches(entry: Mapping[str, Any], runtime: RuntimeInfo | Mapping[str, Any]) -> bool:
    """True when a plan built as `entry` can run here: same TensorRT version, GPU and SM.

    Plans are not portable across TensorRT versions (even patch releases) or GPU
    models, so all three must agree; the GPU name is compared case- and
    punctuation-insensitively because drivers spell it slightly differently.
    """
    try:
        trt_v, gpu, cc = _info_fields(runtime)
        return (
            str(entry["tensorrt_version"]) == trt_v
            and str(entry["compute_capability"]) == cc
            and _slug(str(entry["gpu_name"])) == _slug(gpu)
        )
    except (KeyError, TypeError):
        return False


def select_engine(
    entries: Iterable[Mapping[str, Any]],
    runtime: RuntimeInfo | Mapping[str, Any],
    precision: str | None = None,
    min_batch: int = 1,
) -> dict[str, Any] | None:
    """The best engine entry for this machine: matching, big enough, preferred precision first."""
    ok = [dict(e) for e in entries if engine_matches(e, runtime) and int(e.get("max_batch", 0)) >= min_batch]
    if precision:
        preferred = [e for e in ok if e.get("precision") == precision]
        if preferred:
            return preferred[0]
        return None
    order = {"fp16": 0, "fp32": 1}
    ok.sort(key=lambda e: order.get(str(e.get("precision")), 9))
    return ok[0] if ok else None


def atomic_write(path: Path, data: bytes | memoryview) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def sidecar_path(plan_path: str | os.PathLike[str]) -> Path:
    return Path(str(plan_path) + ".json")


def write_sidecar(plan_path: str | os.PathLike[str], entry: Mapping[str, Any]) -> Path:
    p = sidecar_path(plan_path)
    atomic_write(p, (json.dumps(dict(entry), indent=2, sort_keys=True) + "\n").encode())
    return p


def read_sidecar(plan_path: str | os.PathLike[str]) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(plan_path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _plan_entry(plan: Path, runtime: RuntimeInfo, min_batch: int, **want: Any) -> dict[str, Any] | None:
    """The sidecar entry of ``plan`` when the plan file exists, was built for this machine with room for
    ``min_batch``, and the entry holds every ``want`` value; else None. Hashing the plan itself (the
    costly check) is left to the caller."""
    entry = read_sidecar(plan)
    if (
        entry is None
        or not plan.is_file()
        or not engine_matches(entry, runtime)
        or int(entry.get("max_batch", 0)) < min_batch
        or any(entry.get(key) != value for key, value in want.items())
    ):
        return None
    return entry


def cached_engine(
    cache_dir: str | os.PathLike[str],
    graph_sha256: str,
    runtime: RuntimeInfo,
    precision: str,
    min_batch: int = 1,
) -> dict[str, Any] | None:
    """A previously built engine for this graph and machine, verified against its sidecar hash."""
    plan = Path(cache_dir) / graph_sha256[:16] / plan_filename(precision, runtime)
    entry = _plan_entry(plan, runtime, min_batch, graph_sha256=graph_sha256)
    if entry is None or entry.get("plan_sha256") != sha256_file(plan):
        return None
    return {**entry, "path": str(plan)}


def find_refit_source(
    cache_dir: str | os.PathLike[str],
    structure_sha256: str,
    runtime: RuntimeInfo,
    precision: str,
    min_batch: int = 1,
) -> dict[str, Any] | None:
    """The newest cached refittable plan with this graph structure, built for this machine.

    Any graph hash will do: refit replaces every weight. The plan's own hash is checked
    against its sidecar, so a truncated or edited plan is never the starting point.
    """
    candidates = []
    for sidecar in Path(cache_dir).glob(f"*/{plan_filename(precision, runtime)}.json"):
        plan = sidecar.with_suffix("")
        entry = _plan_entry(plan, runtime, min_batch, structure_sha256=structure_sha256, precision=precision)
        if entry is None or not entry.get("refittable"):
            continue
        candidates.append((plan.stat().st_mtime, plan, entry))
    for _mtime, plan, entry in sorted(candidates, key=lambda c: c[0], reverse=True):
        if entry.get("plan_sha256") == sha256_file(plan):
            return {**entry, "path": str(plan)}
    return None


def timing_cache_name(info: RuntimeInfo) -> str:
    """TensorRT's kernel timing cache for this GPU and version (kept beside the plans it speeds up)."""
    return f"timing.{_slug(info.gpu_name)}.trt{info.tensorrt_version}.cache"
