"""OpenVINO backend: runs the exported bundle, passes the same golden-sample admission, binds once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_testkit import make_bundle

from linewatch.edge.config import BackendConfig, EdgeConfig
from linewatch.edge.inference.backends import BackendUnavailable, create_backend, select_backend
from linewatch.edge.model.bundle import BundleError, open_bundle

ov = pytest.importorskip(
    "openvino", reason="openvino is not installed here (pip install linewatch[openvino])"
)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # -> Bundle
    return open_bundle(make_bundle(tmp_path_factory.mktemp("b") / "toy-v1", max_batch=4))


def test_selected_by_config_after_golden_samples(bundle) -> None:
    cfg = EdgeConfig.model_validate({"backend": {"order": ["openvino", "ort-cpu"], "threads": 1}}).backend
    sel = select_backend(bundle, cfg)
    assert sel.backend.name == "openvino" and sel.skipped == {}
    assert sel.report.ok and sel.report.n == len(bundle.golden.inputs)
    sel.backend.close()


def test_matches_onnxruntime_on_every_batch_size(bundle) -> None:
    vino = create_backend("openvino", bundle, BackendConfig(threads=1))
    ort = create_backend("ort-cpu", bundle, BackendConfig(threads=1))
    h, w = bundle.input_hw
    rng = np.random.default_rng(3)
    for b in (1, 3, 4):
        frames = rng.integers(0, 256, (b, h, w, 3), dtype=np.uint8)
        got, want = vino.infer(frames), ort.infer(frames)
        assert got[0].shape == (b, h, w) and got[0].dtype == np.float32
        assert got[1].shape == (b,) and got[2].dtype == np.int64
        np.testing.assert_allclose(got[0], want[0], atol=1e-4)
        np.testing.assert_allclose(got[1], want[1], atol=1e-4)
        np.testing.assert_array_equal(got[2], want[2])
    with pytest.raises(ValueError):
        vino.infer(np.zeros((1, h, w, 3), np.float32))
    vino.close()
    ort.close()


def test_absent_device_is_unavailable(bundle) -> None:
    if "NPU" in ov.Core().available_devices:
        pytest.skip("this box has an NPU")
    with pytest.raises(BackendUnavailable, match="NPU"):
        create_backend("openvino", bundle, BackendConfig(openvino_device="NPU"))


def test_golden_mismatch_refuses_backend(tmp_path: Path) -> None:
    bad = open_bundle(make_bundle(tmp_path / "bad", golden_offset=0.2))
    with pytest.raises(BundleError, match="golden"):
        select_backend(bad, BackendConfig(), ["openvino"])
