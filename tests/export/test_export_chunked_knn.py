"""PatchCore's chunked kNN through the real exporter: several bank chunks (one partial), the
static TensorRT checks, torch/onnxruntime golden parity, the dense graph's scores, and the
OpenVINO backend's admission on the resulting bundle."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import select_backend
from linewatch.edge.model.bundle import open_bundle
from linewatch.export.bundle_writer import write_bundle
from linewatch.export.parity import torch_infer
from linewatch.export.run_source import load_run_for_export
from linewatch.trainer.methods.patchcore import knn, model

pytestmark = pytest.mark.slow
CHUNK = 64  # the test bank is (2, 200, 152): chunks 64, 64, 64, 8


def test_chunked_knn_exports_and_scores_like_the_dense_graph(fitted_runs, tmp_path, monkeypatch) -> None:
    run = load_run_for_export(fitted_runs("patchcore"))
    t, m, _ = run.graph.data_inputs["bank"].shape
    assert m % CHUNK and m > 2 * CHUNK
    monkeypatch.setattr(knn, "BANK_CHUNK", CHUNK)
    written = write_bundle(
        run.graph, tmp_path / "patchcore-v1", info=run.info, golden_inputs=run.golden_inputs, max_batch=4
    )  # refuses the bundle unless onnxruntime reproduces torch on the golden frames
    assert written.static is not None and written.static.ok, written.static.as_manifest()
    graph = onnx.load(str(written.path / "model.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("TopK") == ops.count("Gemm") == t * -(-m // CHUNK)
    shapes = {
        vi.name: [d.dim_value or d.dim_param for d in vi.type.tensor_type.shape.dim]
        for vi in graph.value_info
    }
    gemm_cols = {shapes[n.output[0]][-1] for n in graph.node if n.op_type == "Gemm"}
    assert gemm_cols == {CHUNK, m % CHUNK}  # distances exist one chunk at a time, never (B, P, T*M)

    bundle = open_bundle(written.path)
    chunked = torch_infer(run.graph, bundle.golden.inputs)
    monkeypatch.setattr(model, "nearest_per_task", knn.dense_nearest_per_task)
    dense = torch_infer(run.graph, bundle.golden.inputs)
    np.testing.assert_allclose(chunked[1], dense[1], atol=1e-5)
    np.testing.assert_allclose(chunked[0], dense[0], atol=1e-5)
    np.testing.assert_array_equal(chunked[2], dense[2])

    pytest.importorskip("openvino", reason="openvino is not installed here (pip install linewatch[openvino])")
    sel = select_backend(bundle, BackendConfig(threads=1), ["openvino"])
    assert sel.backend.name == "openvino" and sel.report.ok
    sel.backend.close()
