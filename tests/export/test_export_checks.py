"""Static checks: TensorRT ops, static shapes, the largest intermediate, total memory."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from linewatch.export.checks import (
    TRT_SUPPORTED_OPS,
    CheckLimits,
    _eval_dim,
    check_largest,
    check_memory,
    check_static_shapes,
    check_tensorrt_ops,
    intermediates,
    largest_intermediate,
    run_static_checks,
)
from linewatch.export.onnx_export import export_onnx
from linewatch.trainer.methods.base import ScoringGraph


@pytest.fixture(scope="module")
def toy_onnx(toy_graph: ScoringGraph, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("checks") / "model.onnx"
    export_onnx(toy_graph, path, max_batch=8)
    return path


def _model(nodes, inputs, outputs, inits=(), opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _t(name: str, shape, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, shape)


def test_toy_graph_passes_every_check(toy_onnx: Path) -> None:
    report = run_static_checks(toy_onnx, max_batch=8)
    assert report.ok, report.as_manifest()
    report.raise_for_failures()
    assert set(report.as_manifest()) == {"tensorrt_ops", "static_shapes", "largest_intermediate", "memory"}


def test_largest_intermediate_scales_with_batch(toy_onnx: Path) -> None:
    # (B, P, T*M) distance matrix: 64 patches of an 8x8 grid against 2 tasks x 48 bank rows.
    name, elements = largest_intermediate(toy_onnx, 8)
    assert elements == 8 * 64 * 96 and name
    assert largest_intermediate(toy_onnx, 1)[1] == 64 * 96
    rows = intermediates(toy_onnx, 8)
    assert rows[0][2] == rows[0][1] * 4 and rows == sorted(rows, key=lambda r: -r[1])


def test_memory_bound(toy_onnx: Path) -> None:
    assert check_memory(toy_onnx, 8).ok
    tight = check_memory(toy_onnx, 8, CheckLimits(max_top_k_bytes=1000))
    assert not tight.ok and "MiB" in tight.detail


def test_the_ops_list_covers_what_the_methods_use() -> None:
    assert {
        "Conv",
        "MatMul",
        "Resize",
        "ArgMin",
        "GatherElements",
        "Sigmoid",
        "AveragePool",
        "TopK",
    } <= TRT_SUPPORTED_OPS
    assert not {"Unique", "StringNormalizer", "RandomNormal", "Upsample"} & TRT_SUPPORTED_OPS


def test_unsupported_op_is_named() -> None:
    m = _model([helper.make_node("Unique", ["x"], ["y"])], [_t("x", [4])], [_t("y", None)])
    result = check_tensorrt_ops(m)
    assert not result.ok and "Unique" in result.detail


def test_uint8_input_must_be_cast_first() -> None:
    m = _model(
        [
            helper.make_node("Transpose", ["frames"], ["t"], perm=[0, 3, 1, 2]),
            helper.make_node("Cast", ["t"], ["y"], to=1),
        ],
        [_t("frames", ["batch", 4, 4, 3], TensorProto.UINT8)],
        [_t("y", ["batch", 3, 4, 4])],
    )
    result = check_tensorrt_ops(m)
    assert not result.ok and "Cast first" in result.detail


def test_opset_custom_domain_and_constant_inputs() -> None:
    topk = helper.make_node("TopK", ["x", "k"], ["v", "i"])
    m = _model(
        [topk],
        [_t("x", [1, 8]), _t("k", [1], TensorProto.INT64)],
        [_t("v", [1, None]), _t("i", [1, None], TensorProto.INT64)],
        opset=18,
    )
    result = check_tensorrt_ops(m)
    assert not result.ok and "opset 18" in result.detail and "constant" in result.detail
    custom = helper.make_node("Foo", ["x"], ["y"], domain="com.example")
    m2 = _model([custom], [_t("x", [2])], [_t("y", [2])])
    m2.opset_import.append(helper.make_opsetid("com.example", 1))
    assert "custom domain" in check_tensorrt_ops(m2).detail


def test_dynamic_dims_are_reported() -> None:
    reshape = helper.make_node("Reshape", ["x", "s"], ["y"])
    m = _model([reshape], [_t("x", ["batch", 12]), _t("s", [2], TensorProto.INT64)], [_t("y", None)])
    result = check_static_shapes(m)
    assert not result.ok
    m2 = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_t("x", ["batch", 3]), _t("bank", ["batch", 2])],
        [_t("y", ["batch", 3])],
    )
    assert "must be static" in check_static_shapes(m2).detail


def test_tensor_over_two_billion_elements_is_refused() -> None:
    m = _model(
        [helper.make_node("Relu", ["x"], ["y"])],
        [_t("x", ["batch", 2**16, 2**12])],
        [_t("y", ["batch", 2**16, 2**12])],
    )
    assert check_largest(m, 4).ok  # 2**30 elements
    big = check_largest(m, 8)  # 2**31 elements
    assert not big.ok and "limit" in big.detail and big.data["elements"] == 2**31


@pytest.mark.parametrize(
    ("dim", "value"), [("batch", 8), ("64*batch", 512), ("batch + 1", 9), ("(batch*2)//2", 8)]
)
def test_symbolic_dims_evaluate_with_the_batch(dim: str, value: int) -> None:
    assert _eval_dim(dim, 8) == value


@pytest.mark.parametrize("dim", ["unk__0", "__import__('os')", "N", "batch.real"])
def test_other_symbols_are_not_static(dim: str) -> None:
    assert _eval_dim(dim, 8) is None
