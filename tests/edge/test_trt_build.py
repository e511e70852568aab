"""TensorRT engine builder: naming and matching everywhere; real builds only where a GPU is.

On a machine without TensorRT and an NVIDIA GPU the build tests are skipped with the
reason `tensorrt_available()` gives; everything that does not need the GPU runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge import trt_build
from edge.trt_build import RuntimeInfo, engine_matches, plan_filename, select_engine

ORIN = RuntimeInfo("10.3.0", "Orin (nvgpu)", "8.7")


def _entry(precision: str = "fp16", **kw) -> dict:
    e = {"file": "x.plan", "tensorrt_version": "10.3.0", "gpu_name": "Orin (nvgpu)"}
    e.update({"compute_capability": "8.7", "precision": precision, "max_batch": 8})
    e.update(kw)
    return e


def test_plan_filename_is_unique_per_precision_gpu_and_version() -> None:
    name = plan_filename("fp16", "NVIDIA H100 80GB HBM3", "10.3.0")
    assert name == "engine.fp16.nvidia-h100-80gb-hbm3.trt10.3.0.plan"
    assert plan_filename("fp32", ORIN) == "engine.fp32.orin-nvgpu.trt10.3.0.plan"
    assert (
        len(
            {
                plan_filename(p, g, v)
                for p in ("fp16", "fp32")
                for g in ("a", "b")
                for v in ("8.6.1", "10.3.0")
            }
        )
        == 8
    )
    with pytest.raises(ValueError):
        plan_filename("int4", "gpu", "10.0")


def test_engine_matches_needs_same_tensorrt_gpu_and_sm() -> None:
    assert engine_matches(_entry(), ORIN)
    assert engine_matches(_entry(gpu_name="ORIN  nvgpu"), ORIN.as_dict())  # spelling differences are fine
    assert not engine_matches(_entry(tensorrt_version="10.3.1"), ORIN)
    assert not engine_matches(_entry(compute_capability="8.6"), ORIN)
    assert not engine_matches(_entry(gpu_name="NVIDIA A2"), ORIN)
    assert not engine_matches({"file": "x.plan"}, ORIN)


def test_select_engine_prefers_fp16_and_checks_batch() -> None:
    entries = [_entry("fp32"), _entry("fp16"), _entry("fp16", tensorrt_version="8.6.1")]
    assert select_engine(entries, ORIN)["precision"] == "fp16"
    assert select_engine(entries, ORIN, precision="fp32")["precision"] == "fp32"
    assert select_engine(entries, ORIN, min_batch=16) is None
    assert select_engine([], ORIN) is None


def test_cache_dir_is_beside_the_bundle_not_inside(tmp_path: Path) -> None:
    root = tmp_path / "store" / "linewatch-v000007"
    assert trt_build.engine_cache_dir(root) == tmp_path / "store" / ".linewatch-v000007.engines"


def test_edge_modules_never_import_torch_or_onnx() -> None:
    code = (
        "import sys, edge.bundle, edge.signing, edge.trt_build;"
        "bad = [m for m in ('torch', 'onnx', 'tensorrt') if m in sys.modules];"
        "print(bad); sys.exit(1 if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


AVAILABLE, REASON = trt_build.tensorrt_available()


@pytest.mark.skipif(
    AVAILABLE, reason="TensorRT is available here: the missing-TensorRT path is not reachable"
)
def test_missing_tensorrt_is_reported_clearly(tmp_path: Path) -> None:
    assert REASON and ("TensorRT" in REASON)
    with pytest.raises(trt_build.EngineBuildError, match=r"TensorRT|GPU"):
        trt_build.build_engine(tmp_path / "model.onnx", tmp_path / "x.plan", max_batch=4)


def _skip_without_gpu() -> None:
    if not AVAILABLE:
        prefix = "" if REASON.startswith("TensorRT not installed") else "engine build needs an NVIDIA GPU: "
        pytest.skip(prefix + REASON)


@pytest.mark.gpu
@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_and_prove_it_on_golden_samples(tmp_path: Path, precision: str) -> None:
    _skip_without_gpu()
    from edge.bundle import check_golden, open_bundle
    from export.toy import write_toy_bundle
    from export.trt_verify import engine_infer

    written = write_toy_bundle(tmp_path / "toy-v1")
    bundle = open_bundle(written.path)
    info = trt_build.runtime_info()
    cache = tmp_path / "timing.cache"
    plan = tmp_path / "cache" / plan_filename(precision, info)
    entry = trt_build.build_engine(
        bundle.onnx_path, plan, max_batch=bundle.max_batch, precision=precision, timing_cache=cache
    )
    assert plan.is_file() and cache.is_file() and trt_build.read_sidecar(plan)["precision"] == precision
    assert engine_matches(entry, info) and entry["graph_sha256"] == bundle.graph_sha256
    report = check_golden(bundle, lambda f: engine_infer(plan, bundle.data_inputs, f, bundle.max_batch))
    assert report.ok
    # A second build reuses the timing cache; ensure_engine finds the cached plan.
    hit = trt_build.ensure_engine(bundle, precision, cache_dir=tmp_path / "cache2")
    assert Path(hit["path"]).is_file()
    again = trt_build.ensure_engine(bundle, precision, cache_dir=tmp_path / "cache2")
    assert again["path"] == hit["path"]
    assert np.isfinite(report.max_map_error)


@pytest.mark.gpu
def test_export_with_tensorrt_ships_matching_engines(tmp_path: Path) -> None:
    _skip_without_gpu()
    from edge.bundle import open_bundle
    from export.toy import write_toy_bundle

    written = write_toy_bundle(tmp_path / "toy-v1", tensorrt=True, precisions=("fp32", "fp16"))
    b = open_bundle(written.path)
    assert {e["precision"] for e in b.engines} == {"fp32", "fp16"}
    assert select_engine(b.engines, trt_build.runtime_info()) is not None
