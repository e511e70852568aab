"""TensorRT engine builder: naming and matching everywhere; real builds only where a GPU is.

On a machine without TensorRT and an NVIDIA GPU the build tests are skipped with the
reason `tensorrt_available()` gives; everything that does not need the GPU runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from linewatch.contract.manifest import sha256_file
from linewatch.edge.model import trt_build
from linewatch.edge.model.trt_build import RuntimeInfo, engine_matches, plan_filename, select_engine

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
    # Keyed by model name, every version in the store shares one cache: refit needs that.
    assert trt_build.engine_cache_dir(root, "brick") == tmp_path / "store" / ".brick.engines"
    assert trt_build.engine_cache_dir(tmp_path / "store" / "brick-v2", "brick") == (
        trt_build.engine_cache_dir(root, "brick")
    )


def _cached_plan(cache: Path, graph: str, runtime: RuntimeInfo = ORIN, **entry) -> Path:
    """A plan file and its sidecar as `build_engine` leaves them (the bytes stand in for a plan)."""
    plan = cache / graph[:16] / plan_filename(entry.get("precision", "fp16"), runtime)
    plan.parent.mkdir(parents=True, exist_ok=True)
    plan.write_bytes(f"plan for {graph}".encode())
    sidecar = {**_entry(**entry), **runtime.as_dict(), "file": plan.name, "graph_sha256": graph}
    sidecar.setdefault("refittable", True)
    sidecar.setdefault("structure_sha256", "S")
    sidecar["plan_sha256"] = sha256_file(plan)
    trt_build.write_sidecar(plan, sidecar)
    return plan


def test_refit_source_is_the_newest_matching_refittable_plan(tmp_path: Path) -> None:
    import os

    cache = tmp_path / "cache"
    old = _cached_plan(cache, "a" * 64)
    new = _cached_plan(cache, "b" * 64)
    os.utime(old, (1_000, 1_000))
    found = trt_build.find_refit_source(cache, "S", ORIN, "fp16", min_batch=8)
    assert found is not None and found["path"] == str(new) and found["graph_sha256"] == "b" * 64
    # Nothing else qualifies: other structure, precision, machine, too small a batch.
    assert trt_build.find_refit_source(cache, "other", ORIN, "fp16") is None
    assert trt_build.find_refit_source(cache, "S", ORIN, "fp32") is None
    assert (
        trt_build.find_refit_source(cache, "S", RuntimeInfo("10.3.1", "Orin (nvgpu)", "8.7"), "fp16") is None
    )
    assert trt_build.find_refit_source(cache, "S", ORIN, "fp16", min_batch=16) is None
    assert trt_build.find_refit_source(tmp_path / "missing", "S", ORIN, "fp16") is None


def test_refit_source_skips_plans_not_built_refittable_and_tampered_ones(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    _cached_plan(cache, "a" * 64, refittable=False)
    assert trt_build.find_refit_source(cache, "S", ORIN, "fp16") is None
    older = _cached_plan(cache, "b" * 64)
    tampered = _cached_plan(cache, "c" * 64)
    import os

    os.utime(older, (1_000, 1_000))
    tampered.write_bytes(b"edited after the build")
    found = trt_build.find_refit_source(cache, "S", ORIN, "fp16")
    assert found is not None and found["path"] == str(older)  # the newest is corrupt: fall back


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
    from linewatch.edge.model.bundle import check_golden, open_bundle
    from linewatch.export.toy import write_toy_bundle
    from linewatch.export.trt_verify import engine_infer

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
    from linewatch.edge.model.bundle import open_bundle
    from linewatch.export.toy import write_toy_bundle

    written = write_toy_bundle(tmp_path / "toy-v1", tensorrt=True, precisions=("fp32", "fp16"))
    b = open_bundle(written.path)
    assert {e["precision"] for e in b.engines} == {"fp32", "fp16"}
    assert select_engine(b.engines, trt_build.runtime_info()) is not None


@pytest.mark.gpu
def test_retrained_weights_are_refitted_into_the_cached_engine(tmp_path: Path) -> None:
    """A refresh with new weights and the same layers: refit a copy of the cached plan, no rebuild.

    The refitted engine must reproduce the NEW bundle's golden samples (which onnxruntime
    and torch produced), and must be cheaper than the build it replaces.
    """
    _skip_without_gpu()
    from linewatch.edge.model.bundle import check_golden, open_bundle
    from linewatch.export.toy import toy_scoring_graph, write_toy_bundle
    from linewatch.export.trt_verify import engine_infer

    graphs = [toy_scoring_graph(seed=s) for s in (0, 1)]
    for g in graphs:
        g.meta["refittable"] = True
    v1 = open_bundle(write_toy_bundle(tmp_path / "store" / "toy-v1", graph=graphs[0], version=1).path)
    v2 = open_bundle(write_toy_bundle(tmp_path / "store" / "toy-v2", graph=graphs[1], version=2).path)
    assert v1.structure_sha256 == v2.structure_sha256 and v1.graph_sha256 != v2.graph_sha256

    built = trt_build.ensure_engine(v1, "fp32")
    assert built["origin"] == "built" and built["refittable"] is True
    refitted = trt_build.ensure_engine(v2, "fp32")
    assert refitted["origin"] == "refitted", refitted
    assert refitted["graph_sha256"] == v2.graph_sha256
    assert refitted["refitted_from"]["graph_sha256"] == v1.graph_sha256
    assert Path(refitted["path"]).parent.parent == Path(built["path"]).parent.parent  # one cache
    assert refitted["refit_seconds"] < built["build_seconds"]
    report = check_golden(v2, lambda f: engine_infer(refitted["path"], v2.data_inputs, f, v2.max_batch))
    assert report.ok, report.as_dict()
    # v1's engine is untouched and still right for v1 (the line may roll back to it).
    report_v1 = check_golden(v1, lambda f: engine_infer(built["path"], v1.data_inputs, f, v1.max_batch))
    assert report_v1.ok
    # A restart finds the refitted plan by graph hash.
    assert trt_build.ensure_engine(v2, "fp32")["origin"] == "cached"
