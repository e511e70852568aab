"""ONNX export of a ScoringGraph: the graph contract, a dynamic batch, and parity with torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from linewatch.export.checks import check_static_shapes
from linewatch.export.onnx_export import ExportError, export_onnx
from linewatch.export.parity import compare, ort_infer, ort_session, torch_infer
from linewatch.export.toy import toy_frames
from linewatch.trainer.methods.base import ScoringGraph


@pytest.fixture(scope="module")
def toy_onnx(toy_graph: ScoringGraph, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = export_onnx(toy_graph, path, max_batch=8)
    assert result.exporter == "dynamo" and result.opset == 17
    return path


def _dims(vi: onnx.ValueInfoProto) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def test_graph_inputs_outputs_follow_the_bundle_contract(toy_onnx: Path, toy_graph: ScoringGraph) -> None:
    m = onnx.load(str(toy_onnx))
    inits = {i.name for i in m.graph.initializer}
    inputs = [i for i in m.graph.input if i.name not in inits]
    assert [i.name for i in inputs] == ["frames", "bank", "norm"]
    assert not {"bank", "norm"} & inits, "data arrays must be graph inputs, not initializers"
    assert inputs[0].type.tensor_type.elem_type == onnx.TensorProto.UINT8
    assert _dims(inputs[0]) == ["batch", 32, 32, 3]
    for vi, arr in zip(inputs[1:], toy_graph.data_inputs.values(), strict=True):
        assert _dims(vi) == list(arr.shape)
    outs = {o.name: _dims(o) for o in m.graph.output}
    assert outs == {"anomaly_map": ["batch", 32, 32], "score": ["batch"], "task": ["batch"]}
    assert next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17
    # TensorRT wants the uint8 input cast before anything else touches it.
    assert [n.op_type for n in m.graph.node if "frames" in n.input] == ["Cast"]
    assert len(m.graph.value_info) > 10  # shapes are saved with the graph


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_dynamic_batch_matches_torch(toy_onnx: Path, toy_graph: ScoringGraph, batch: int) -> None:
    frames = np.concatenate(
        [
            toy_frames(batch - batch // 2, (32, 32), seed=9),
            toy_frames(batch // 2, (32, 32), seed=10, defect=True),
        ]
    )
    ref = torch_infer(toy_graph, frames, batch_size=batch)
    got = ort_infer(ort_session(toy_onnx), toy_graph.data_inputs, frames, batch_size=batch)
    report = compare(ref, got)
    assert report.ok and report.max_score_error < 1e-5, report
    assert got[0].dtype == np.float32 and got[2].dtype == np.int64


def test_new_data_values_need_no_new_graph(toy_onnx: Path, toy_graph: ScoringGraph) -> None:
    """The bank is data: other values through the same graph give torch's answer for them."""
    data = dict(toy_graph.data_inputs)
    data["bank"] = (data["bank"] * 1.3).astype(np.float32)
    data["norm"] = data["norm"] * np.float32(0.7)
    g2 = ScoringGraph(toy_graph.module, data, toy_graph.input_hw)
    frames = toy_frames(4, (32, 32), seed=11)
    assert compare(torch_infer(g2, frames), ort_infer(ort_session(toy_onnx), data, frames)).ok


class _Unused(torch.nn.Module):
    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, frames, bank, norm, spare):
        return self.inner(frames, bank, norm)


def test_unused_data_input_is_refused(toy_graph: ScoringGraph, tmp_path: Path) -> None:
    data = {**toy_graph.data_inputs, "spare": np.zeros(3, np.float32)}
    g = ScoringGraph(_Unused(toy_graph.module), data, toy_graph.input_hw)
    with pytest.raises(ExportError, match="unused"):
        export_onnx(g, tmp_path / "m.onnx", max_batch=4)


@pytest.mark.parametrize("name", ["frames", "score", "bad name", "../x"])
def test_bad_data_input_names(toy_graph: ScoringGraph, tmp_path: Path, name: str) -> None:
    data = {name: toy_graph.data_inputs["bank"], "norm": toy_graph.data_inputs["norm"]}
    with pytest.raises(ExportError):
        export_onnx(ScoringGraph(toy_graph.module, data, toy_graph.input_hw), tmp_path / "m.onnx", 4)


def test_legacy_exporter_leaves_dynamic_dims_that_the_check_catches(
    toy_graph: ScoringGraph, tmp_path: Path
) -> None:
    """Why the dynamo exporter is the default: TorchScript tracing keeps shape arithmetic."""
    result = export_onnx(toy_graph, tmp_path / "legacy.onnx", max_batch=8, exporter="legacy")
    assert result.exporter == "legacy"
    frames = toy_frames(3, (32, 32), seed=12)
    got = ort_infer(ort_session(result.path), toy_graph.data_inputs, frames)
    assert compare(torch_infer(toy_graph, frames), got).ok  # numerically fine...
    check = check_static_shapes(result.path)
    assert not check.ok and "dims" in check.detail  # ...but not static apart from batch
