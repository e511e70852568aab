"""`--int8`: a QDQ PatchCore bundle calibrated on training images, with its own golden tolerances.

Proves: the INT8 graph passes the static TensorRT checks, the manifest states the quantisation and
the golden tolerances, the edge admits it on onnxruntime, a
bank-only refresh of it reuses its INT8 graph, and the CLI refuses --int8 where it cannot apply.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import select_backend
from linewatch.edge.model.bundle import open_bundle
from linewatch.export import quantize
from linewatch.export.bundle_writer import write_bundle
from linewatch.export.cli import main
from linewatch.export.run_source import calibration_frames, load_run_for_export

pytestmark = pytest.mark.slow


def test_int8_bundle_is_admitted_and_refreshable(fitted_runs, tmp_path) -> None:
    run = load_run_for_export(fitted_runs("patchcore"))
    calib = calibration_frames(run.info, run.graph.input_hw, n=8)
    assert calib.shape == (8, *run.graph.input_hw, 3) and calib.dtype == np.uint8
    written = write_bundle(
        run.graph,
        tmp_path / "patchcore-v1",
        info=run.info,
        golden_inputs=run.golden_inputs,
        max_batch=4,
        int8_calibration=calib,
    )
    m = written.manifest
    assert written.static is not None and written.static.ok, written.static.as_manifest()
    q = m["quantization"]
    assert q["precision"] == "int8" and q["calibration_frames"] == 8 and q["fp32_parity"]["ok"]
    assert (m["golden"]["atol_score"], m["golden"]["atol_map"]) == quantize.GOLDEN_ATOL
    nodes = onnx.load(str(written.path / "model.onnx")).graph.node
    dq_out = {n.output[0] for n in nodes if n.op_type == "DequantizeLinear"}
    convs = [n for n in nodes if n.op_type == "Conv"]
    assert convs and all(n.input[0] in dq_out and n.input[1] in dq_out for n in convs)
    assert not any(n.input[0] in dq_out for n in nodes if n.op_type == "Gemm")  # kNN stays float

    bundle = open_bundle(written.path)
    # onnxruntime is the INT8 reference; OpenVINO's int8 rounding is judged by the same tolerances in
    # benchmarks/backend_compare.py (at 64 px this tiny model's map moves past them on OpenVINO).
    sel = select_backend(bundle, BackendConfig(threads=1), ["ort-cpu"])
    assert sel.report.ok and sel.report.max_score_error <= 1e-5, sel.report.as_dict()
    sel.backend.close()

    refresh = write_bundle(
        run.graph,
        tmp_path / "patchcore-v2",
        info=run.info,
        golden_inputs=run.golden_inputs,
        bank_only=True,
        base=written.path,
    )
    assert refresh.manifest["quantization"]["fp32_graph_sha256"] == q["fp32_graph_sha256"]
    assert refresh.manifest["bank_only"]["graph_sha256"] == bundle.graph_sha256
    assert open_bundle(refresh.path, base=bundle).golden.scores.tolist() == bundle.golden.scores.tolist()


def test_cli_refuses_int8_with_bank_only_or_tensorrt(tmp_path, capsys) -> None:
    for extra in (["--bank-only"], ["--tensorrt"]):
        assert main(["--run", str(tmp_path), "--out", str(tmp_path / "b"), "--int8", *extra]) == 2
        assert "--int8" in capsys.readouterr().err
