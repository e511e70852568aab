"""Build TensorRT engines from a bundle's `model.onnx` (export machine and box alike).

Why it lives in `edge`: a plan only runs on the TensorRT version and GPU it was built
for. The exporter ships engines for the GPUs it has; when none matches the box, the
box builds one itself from `model.onnx` and caches it beside the bundle (never inside
it: the bundle's manifest is signed and must list every `.plan`).

Supported: TensorRT 8.6 and 10.x Python API. `tensorrt` is imported lazily inside the
functions, so importing this module costs nothing on a CPU-only box.

Engine shape contract:
- `frames` (uint8 NHWC): one optimisation profile, batch 1..max_batch, opt = `opt_batch`
  (default max_batch: the runtime batches frames up to max_batch under load).
- data inputs (memory banks, Gaussians, normalisation): min = opt = max = their static
  shapes. They stay network inputs, so a bank-only refresh reuses the engine.
- Precision: FP32, or FP16 (only where the GPU has fast FP16, unless forced). INT8 comes
  only from the graph: an `--int8` bundle carries QuantizeLinear/DequantizeLinear nodes with
  their calibrated scales (export/quantize.py), so the INT8 flag is set for it (TensorRT's
  explicit quantization, no calibrator on the box); the kNN stays in float.
- TensorRT 8.6 casts int64 tensors to int32: on 8.6 the `task` output binding is int32.

Refit: a trained method (EfficientAD, STFPM) ships new weights in the same layers on every
refresh. Its bundles say `refit.refittable`; the box builds their engines with the REFIT
flag and, when the next version arrives with the same `refit.structure_sha256`, copies
the cached plan and refits the new weights into it (seconds) instead of rebuilding it
(minutes). See `ensure_engine` for the order of preference.

Every plan gets a JSON sidecar (`<plan>.json`) with its manifest entry: TensorRT
version, GPU name, compute capability, precision, batch range and the sha256 of the
graph it was built from. Naming, matching and finding plans need no TensorRT and live in
`edge/model/trt_plans.py`; the cache folders are part of the store layout (`contract/store.py`).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from linewatch.contract.graph_io import FRAMES
from linewatch.contract.manifest import sha256_file
from linewatch.contract.store import engine_cache_dir
from linewatch.edge.model.trt_plans import (
    PRECISIONS,
    RuntimeInfo,
    atomic_write,
    cached_engine,
    engine_matches,
    find_refit_source,
    plan_filename,
    read_sidecar,
    select_engine,
    sidecar_path,
    timing_cache_name,
    write_sidecar,
)

# Re-exported: plan naming, matching and the cache lived here before edge/model/trt_plans.py.
__all__ = [
    "PRECISIONS",
    "EngineBuildError",
    "RuntimeInfo",
    "build_engine",
    "cached_engine",
    "engine_cache_dir",
    "engine_matches",
    "ensure_engine",
    "find_refit_source",
    "gpu_info",
    "plan_filename",
    "read_sidecar",
    "refit_engine",
    "runtime_info",
    "select_engine",
    "sidecar_path",
    "tensorrt_available",
    "write_sidecar",
]

log = logging.getLogger(__name__)

DEFAULT_WORKSPACE_BYTES = 1 << 30
INSTALL_HINT = (
    "TensorRT not installed: engine build needs an NVIDIA GPU with TensorRT "
    "(pip install 'linewatch[tensorrt]' on a CUDA machine, or JetPack on a Jetson)"
)


class EngineBuildError(RuntimeError):
    """TensorRT is missing, the GPU is missing, or the build failed (message says which)."""


def _import_trt() -> Any:
    try:
        import tensorrt as trt  # type: ignore[import-not-found]
    except ImportError as e:  # also catches a broken install missing its libs
        raise EngineBuildError(f"{INSTALL_HINT}: {e}") from e
    return trt


def _trt_major(trt: Any) -> int:
    return int(str(trt.__version__).split(".")[0])


def _gpu_from_cuda_python() -> tuple[str, str] | None:
    try:
        try:
            from cuda.bindings import runtime as cudart  # type: ignore[import-not-found]
        except ImportError:
            from cuda import cudart  # type: ignore[import-not-found,no-redef]
        err, prop = cudart.cudaGetDeviceProperties(0)
        if int(err) != 0:
            return None
        name = prop.name.decode() if isinstance(prop.name, bytes) else str(prop.name)
        return name.strip("\x00 "), f"{prop.major}.{prop.minor}"
    except Exception:
        return None


def _gpu_from_pycuda() -> tuple[str, str] | None:
    try:
        import pycuda.driver as cuda  # type: ignore[import-not-found]

        cuda.init()
        dev = cuda.Device(0)
        major, minor = dev.compute_capability()
        return str(dev.name()), f"{major}.{minor}"
    except Exception:
        return None


def _gpu_from_nvidia_smi() -> tuple[str, str] | None:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return None
    try:
        out = subprocess.run(
            [exe, "--query-gpu=name,compute_cap", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    if not out:
        return None
    name, _, cc = out.splitlines()[0].rpartition(",")
    return name.strip(), cc.strip()


def gpu_info() -> tuple[str, str] | None:
    """(GPU name, compute capability) of device 0, or None when no CUDA GPU is visible."""
    for probe in (_gpu_from_cuda_python, _gpu_from_pycuda, _gpu_from_nvidia_smi):
        found = probe()
        if found:
            return found
    return None


def tensorrt_available() -> tuple[bool, str]:
    """Whether engines can be built here, and why not (a sentence fit for a skip or an error)."""
    try:
        trt = _import_trt()
    except EngineBuildError as e:
        return False, str(e)
    gpu = gpu_info()
    if gpu is None:
        return False, f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible"
    try:
        builder = trt.Builder(trt.Logger(trt.Logger.ERROR))
        if builder is None:
            raise RuntimeError("Builder() returned None")
    except Exception as e:
        return False, f"TensorRT {trt.__version__} cannot create a builder on {gpu[0]}: {e}"
    return True, f"TensorRT {trt.__version__} on {gpu[0]} (sm {gpu[1]})"


def runtime_info() -> RuntimeInfo:
    """The TensorRT version and GPU of this machine (raises EngineBuildError when absent)."""
    trt = _import_trt()
    gpu = gpu_info()
    if gpu is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} is installed but no CUDA GPU is visible")
    return RuntimeInfo(str(trt.__version__), gpu[0], gpu[1])


def build_engine(
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    max_batch: int,
    opt_batch: int | None = None,
    precision: str = "fp32",
    force_fp16: bool = False,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    timing_cache: str | os.PathLike[str] | None = None,
    refittable: bool = False,
    structure_sha256: str | None = None,
    frames_input: str = FRAMES,
    verbose: bool = False,
) -> dict[str, Any]:
    """Parse `onnx_path`, build a serialized plan at `out_path`, write its sidecar; return the entry.

    `timing_cache` is loaded when the file exists and saved after the build, so repeat
    builds (same GPU, new bank-only graph or FP16 after FP32) skip most kernel timing.
    """
    if precision not in PRECISIONS:
        raise EngineBuildError(f"precision must be one of {PRECISIONS} (INT8 is not implemented)")
    if max_batch < 1:
        raise EngineBuildError("max_batch must be >= 1")
    opt = int(opt_batch or max_batch)
    if not 1 <= opt <= max_batch:
        raise EngineBuildError(f"opt_batch {opt} must lie in 1..{max_batch}")
    trt = _import_trt()
    info = runtime_info()
    onnx_path, out_path = Path(onnx_path), Path(out_path)

    logger = trt.Logger(trt.Logger.VERBOSE if verbose else trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if _trt_major(trt) < 10:  # explicit batch is the only mode in 10.x and the flag is deprecated there
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildError(f"TensorRT ONNX parser rejected {onnx_path.name}: {errors}")

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    if precision == "fp16":
        fast = bool(getattr(builder, "platform_has_fast_fp16", True))
        if not fast and not force_fp16:
            raise EngineBuildError(f"{info.gpu_name} has no fast FP16; build fp32 or force FP16")
        config.set_flag(trt.BuilderFlag.FP16)
    if refittable:
        config.set_flag(trt.BuilderFlag.REFIT)
    if any(network.get_layer(i).type == trt.LayerType.QUANTIZE for i in range(network.num_layers)):
        config.set_flag(trt.BuilderFlag.INT8)  # Q/DQ graph: explicit quantization with its own scales

    profile = builder.create_optimization_profile()
    inputs: dict[str, list[int]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = [int(d) for d in tensor.shape]
        inputs[tensor.name] = shape
        if tensor.name == frames_input:
            rest = shape[1:]
            if any(d < 0 for d in rest):
                raise EngineBuildError(f"{frames_input} must be static apart from batch, got {shape}")
            profile.set_shape(tensor.name, (1, *rest), (opt, *rest), (max_batch, *rest))
        else:
            if any(d < 0 for d in shape):
                raise EngineBuildError(f"data input {tensor.name} must have a static shape, got {shape}")
            profile.set_shape(tensor.name, shape, shape, shape)
    if frames_input not in inputs:
        raise EngineBuildError(f"graph has no input named {frames_input!r}: {list(inputs)}")
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else None
    cache_bytes = cache_path.read_bytes() if cache_path and cache_path.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)

    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise EngineBuildError(
            f"TensorRT failed to build a {precision} engine for {onnx_path.name}; see its log"
        )
    atomic_write(out_path, memoryview(plan))
    if cache_path is not None:
        atomic_write(cache_path, memoryview(config.get_timing_cache().serialize()))

    entry: dict[str, Any] = {
        "file": out_path.name,
        "tensorrt_version": info.tensorrt_version,
        "gpu_name": info.gpu_name,
        "compute_capability": info.compute_capability,
        "precision": precision,
        "max_batch": int(max_batch),
        "opt_batch": opt,
        "refittable": bool(refittable),
        "structure_sha256": structure_sha256,
        "workspace_bytes": int(workspace_bytes),
        "build_seconds": round(seconds, 3),
        "graph_sha256": sha256_file(onnx_path),
        "plan_sha256": sha256_file(out_path),
        "inputs": inputs,
    }
    write_sidecar(out_path, entry)
    return entry


def _refit_from_onnx(trt: Any, refitter: Any, logger: Any, onnx_path: Path) -> list[Any]:
    """Hand every ONNX initializer to the refitter; returns arrays that must outlive the refit.

    TensorRT 10 parses the ONNX file itself (OnnxParserRefitter), which also covers weights
    the parser transformed while building. TensorRT 8.6 has no such parser: each initializer
    is set by name, which works for the weights the parser kept as they were; anything
    else shows up as missing and the caller rebuilds.
    """
    if hasattr(trt, "OnnxParserRefitter"):
        parser_refitter = trt.OnnxParserRefitter(refitter, logger)
        if not parser_refitter.refit_from_file(str(onnx_path)):
            n = int(getattr(parser_refitter, "num_errors", 0))
            errors = "; ".join(str(parser_refitter.get_error(i)) for i in range(n)) or "no detail"
            raise EngineBuildError(f"ONNX refitter rejected {onnx_path.name}: {errors}")
        return []
    try:
        import onnx  # type: ignore[import-not-found]
        from onnx import numpy_helper  # type: ignore[import-not-found]
    except ImportError as e:
        raise EngineBuildError(f"refit on TensorRT {trt.__version__} needs the onnx package: {e}") from e
    keep = []
    wanted = set(refitter.get_all_weights())
    for init in onnx.load(str(onnx_path)).graph.initializer:
        if init.name not in wanted:
            continue
        array = np.ascontiguousarray(numpy_helper.to_array(init))
        keep.append(array)
        if not refitter.set_named_weights(init.name, trt.Weights(array)):
            raise EngineBuildError(f"refit refused weights {init.name!r} (shape {array.shape})")
    return keep


def refit_engine(
    source_plan: str | os.PathLike[str],
    onnx_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    *,
    structure_sha256: str,
) -> dict[str, Any]:
    """Load a refittable plan, give it the weights of `onnx_path`, save it as a new plan.

    Seconds instead of a build's minutes (on a Jetson, tens of minutes). The live engine is
    never touched: a new copy is refitted, so the model serving the line keeps its weights
    until the new one has passed its golden samples and is swapped in.
    """
    trt = _import_trt()
    info = runtime_info()
    source_plan, onnx_path, out_path = Path(source_plan), Path(onnx_path), Path(out_path)
    source = read_sidecar(source_plan) or {}
    logger = trt.Logger(trt.Logger.WARNING)
    t0 = time.perf_counter()
    engine = trt.Runtime(logger).deserialize_cuda_engine(source_plan.read_bytes())
    if engine is None:
        raise EngineBuildError(f"TensorRT could not deserialise {source_plan}")
    if not bool(getattr(engine, "refittable", False)):
        raise EngineBuildError(f"{source_plan.name} was not built refittable")
    refitter = trt.Refitter(engine, logger)
    keep = _refit_from_onnx(trt, refitter, logger, onnx_path)
    missing = list(refitter.get_missing_weights())
    if missing:
        raise EngineBuildError(f"refit is missing {len(missing)} weights, e.g. {missing[:3]}")
    if not refitter.refit_cuda_engine():
        raise EngineBuildError(f"TensorRT refit of {source_plan.name} failed; see its log")
    del keep
    atomic_write(out_path, memoryview(engine.serialize()))
    seconds = time.perf_counter() - t0
    entry = {
        **{k: v for k, v in source.items() if k not in ("file", "path", "build_seconds")},
        "file": out_path.name,
        "tensorrt_version": info.tensorrt_version,
        "gpu_name": info.gpu_name,
        "compute_capability": info.compute_capability,
        "refittable": True,
        "structure_sha256": structure_sha256,
        "graph_sha256": sha256_file(onnx_path),
        "plan_sha256": sha256_file(out_path),
        "refit_seconds": round(seconds, 3),
        "refitted_from": {
            "graph_sha256": source.get("graph_sha256"),
            "plan_sha256": source.get("plan_sha256"),
        },
    }
    write_sidecar(out_path, entry)
    return entry


def ensure_engine(
    bundle: Any,
    precision: str = "fp16",
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    force_fp16: bool = False,
) -> dict[str, Any]:
    """An engine entry (with absolute `path`) for `bundle` (an `edge.model.bundle.Bundle`) on this box.

    Order, cheapest first; the returned entry's `origin` says which one it was:
    - `bundled`: a plan shipped in the bundle matches this GPU and TensorRT;
    - `cached`: this box built or refitted a plan for the same graph before (a restart, or
      a bank-only refresh, which keeps its base's graph);
    - `refitted`: a cached refittable plan of the same structure takes the new weights
      (a trained method's refresh); on any refit failure the box falls back to:
    - `built`: a fresh build into the cache, refittable when the bundle says so.
    The caller still runs `check_golden` on the chosen engine before going live.
    """
    info = runtime_info()
    chosen = select_engine(bundle.engines, info, precision, bundle.max_batch)
    if chosen is not None:
        return {**chosen, "origin": "bundled"}
    base = bundle.base if bundle.base is not None else bundle
    cdir = Path(cache_dir) if cache_dir else engine_cache_dir(base.root, bundle.name)
    graph_sha = bundle.graph_sha256
    hit = cached_engine(cdir, graph_sha, info, precision, bundle.max_batch)
    if hit is not None:
        return {**hit, "origin": "cached"}
    plan = cdir / graph_sha[:16] / plan_filename(precision, info)
    structure, refittable = bundle.structure_sha256, bundle.refittable
    if refittable and structure:
        source = find_refit_source(cdir, structure, info, precision, bundle.max_batch)
        if source is not None:
            try:
                entry = refit_engine(source["path"], bundle.onnx_path, plan, structure_sha256=structure)
                log.info("engine refitted", extra={"plan": str(plan), "seconds": entry["refit_seconds"]})
                return {**entry, "path": str(plan), "origin": "refitted"}
            except EngineBuildError as e:
                log.warning("engine refit failed; building instead", extra={"error": str(e)})
    entry = build_engine(
        bundle.onnx_path,
        plan,
        max_batch=bundle.max_batch,
        precision=precision,
        force_fp16=force_fp16,
        workspace_bytes=workspace_bytes,
        refittable=refittable,
        structure_sha256=structure,
        timing_cache=cdir / timing_cache_name(info),
    )
    return {**entry, "path": str(plan), "origin": "built"}
