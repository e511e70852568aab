"""The replay-trained methods' runs exported by the unmodified exporter (`linewatch-export`).

The methods are the registry's (every one with a `replay` strategy), so a new one is checked here too.

Proves for both: the whole scoring graph (network weights as constants; map quantiles
and the calibration as data inputs) passes the static TensorRT checks, and
onnxruntime agrees with torch on every test image of the three tasks (normalised
score within 1e-3, map within 1e-2, task always 0: one shared slot).
"""

from __future__ import annotations

import numpy as np
import pytest
from trained_methods_kit import HW, TASKS, get_kit, replay_trained_methods

from linewatch.edge.model.bundle import check_golden, open_bundle
from linewatch.export.checks import run_static_checks
from linewatch.export.graph_structure import structure_sha256
from linewatch.export.parity import compare, ort_infer, ort_session, torch_infer
from linewatch.export.run_source import load_run_for_export

pytestmark = pytest.mark.slow
METHODS = replay_trained_methods()
MAX_BATCH = 4
DATA_INPUTS = {  # a method not listed has only the calibration as data inputs
    "efficientad": ["quantiles", "center", "scale"],
    "cfa": ["bank", "center", "scale"],  # the memory bank is data, so a bank-only refresh reuses the engine
}


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    return get_kit(tmp_path_factory)


@pytest.fixture(scope="module")
def exported(kit):
    """(run export, opened bundle): the bundle as `linewatch-export` wrote it, the graph from the run."""
    cache: dict[str, tuple] = {}

    def get(method: str):
        if method not in cache:
            bundle = open_bundle(kit.bundle(method), key=kit.keys()[1], require_signature=True)
            cache[method] = (load_run_for_export(kit.run(method, "replay")[0]), bundle)
        return cache[method]

    return get


@pytest.fixture(scope="module")
def test_frames(kit) -> tuple[np.ndarray, np.ndarray]:
    from linewatch.trainer.data import load_task, read_images

    samples = [s for t in TASKS for s in load_task(kit.spec, t).test]
    return read_images([s.path for s in samples], HW), np.array([s.label for s in samples])


@pytest.mark.parametrize("method", METHODS)
def test_export_passes_the_static_tensorrt_checks(exported, method: str) -> None:
    _, bundle = exported(method)
    m = bundle.manifest
    assert all(r["ok"] for r in m["export"]["static_checks"].values() if isinstance(r, dict) and "ok" in r)
    report = run_static_checks(bundle.onnx_path, MAX_BATCH)
    assert report.ok, report.as_manifest()
    assert {r.name for r in report.results} == {
        "tensorrt_ops",
        "static_shapes",
        "largest_intermediate",
        "memory",
    }
    assert (m["method"], m["strategy"], m["tasks"]) == (method, "replay", list(TASKS))
    assert [d["name"] for d in m["data_inputs"]] == DATA_INPUTS.get(method, ["center", "scale"])
    assert m["method_metadata"]["replay_buffer"]["images"] > 0
    # Retrained on every refresh: engines are built refittable, keyed by the weight-free structure.
    assert m["refit"] == {"refittable": True, "structure_sha256": structure_sha256(bundle.onnx_path)}
    if method == "efficientad":
        assert (
            m["method_metadata"]["teacher"]["sha256"] and len(m["calibration"]["map_quantiles"]["local"]) == 2
        )
    assert m["export"]["golden_parity"]["ok"] and m["golden"]["source"].startswith("test images")
    assert bundle.signature_verified


@pytest.mark.parametrize("method", METHODS)
def test_onnxruntime_matches_torch_on_every_test_image(exported, test_frames, method: str) -> None:
    run, bundle = exported(method)
    frames, labels = test_frames
    session = ort_session(bundle.onnx_path)
    ort = ort_infer(session, bundle.data_inputs, frames, batch_size=MAX_BATCH)
    reference = torch_infer(run.graph, frames, batch_size=MAX_BATCH)
    report = compare(reference, ort, atol_score=1e-3, atol_map=1e-2)
    assert report.ok, str(report)
    assert report.n == len(frames) == 60 and set(ort[2].tolist()) == {0}
    assert ort[1][labels == 1].mean() > ort[1][labels == 0].mean()  # defects score higher on average
    assert check_golden(bundle, lambda f: ort_infer(session, bundle.data_inputs, f, MAX_BATCH)).ok


@pytest.mark.parametrize("size", ["s", "m"])
def test_published_unpadded_pdn_graph_exports_too(size: str, tmp_path) -> None:
    """The trained runs above use the padded PDN (64 px); the published, unpadded one zero-borders its
    maps instead, and that graph must also pass the checks and match torch (untrained weights suffice)."""
    from linewatch.export.onnx_export import export_onnx
    from linewatch.trainer.methods.registry import build_method

    tiny = {"size": size, "width": 0.125, "out_channels": 16, "progress": False}
    method = build_method("efficientad", "replay", image_size=(64, 72), **tiny)
    method.quantiles = [0.1, 0.5, 0.2, 0.9]
    assert method.model.pad != (0, 0, 0, 0)
    graph = method.scoring_graph()
    export_onnx(graph, tmp_path / "m.onnx", max_batch=2)
    assert run_static_checks(tmp_path / "m.onnx", 2).ok
    frames = np.random.default_rng(0).integers(0, 256, (3, 64, 72, 3), dtype=np.uint8)
    ort = ort_infer(ort_session(tmp_path / "m.onnx"), graph.data_inputs, frames, batch_size=2)
    assert compare(torch_infer(graph, frames, batch_size=2), ort, atol_score=1e-3, atol_map=1e-2).ok
