"""Native TensorRT backend: runs only where TensorRT, pycuda and a GPU exist; skipped with the reason elsewhere."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_testkit import make_bundle

from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import BackendUnavailable, create_backend, select_backend
from linewatch.edge.model.bundle import check_golden, open_bundle
from linewatch.edge.model.trt_build import tensorrt_available

AVAILABLE, REASON = tensorrt_available()


def test_unavailable_is_a_clear_skip_reason(tmp_path: Path) -> None:
    bundle = open_bundle(make_bundle(tmp_path / "toy-v1"))
    if AVAILABLE:
        pytest.skip("TensorRT is available here; the GPU test below covers it")
    with pytest.raises(BackendUnavailable) as err:
        create_backend("tensorrt", bundle, BackendConfig())
    assert str(err.value)
    sel = select_backend(bundle, BackendConfig())
    assert sel.skipped["tensorrt"] == str(err.value)
    sel.backend.close()


@pytest.mark.gpu
@pytest.mark.skipif(not AVAILABLE, reason=f"TensorRT backend needs an NVIDIA GPU with TensorRT: {REASON}")
def test_tensorrt_matches_golden_and_caches_engine(tmp_path: Path) -> None:
    bundle = open_bundle(make_bundle(tmp_path / "toy-v1", max_batch=4))
    backend = create_backend("tensorrt", bundle, BackendConfig(precision="fp32"))
    report = check_golden(bundle, backend.infer)
    assert report.ok
    maps, _scores, tasks = backend.infer(bundle.golden.inputs[:1])
    assert maps.shape == (1, 64, 64) and tasks.dtype == np.int64
    assert Path(backend.plan_path).is_file() and tmp_path in Path(backend.plan_path).parents
    backend.close()
    again = create_backend("tensorrt", bundle, BackendConfig(precision="fp32"))  # cached plan reused
    assert again.plan_path == backend.plan_path
    again.close()
