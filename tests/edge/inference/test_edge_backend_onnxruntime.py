"""onnxruntime backend: chosen by order and availability, data inputs bound once, golden-checked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from edge_testkit import make_bundle

from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.backends import BackendUnavailable, create_backend, select_backend
from linewatch.edge.model.bundle import BundleError, open_bundle


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory):  # -> Bundle
    return open_bundle(make_bundle(tmp_path_factory.mktemp("b") / "toy-v1", max_batch=4))


def test_order_skips_unavailable_with_reasons(bundle) -> None:
    sel = select_backend(bundle, BackendConfig())
    assert sel.backend.name == "ort-cpu" or sel.backend.name in ("tensorrt", "ort-tensorrt", "ort-cuda")
    for name, reason in sel.skipped.items():
        assert reason, name
    assert sel.report.ok and sel.report.n == 3
    sel.backend.close()


def test_infer_batches_and_outputs(bundle) -> None:
    backend = create_backend("ort-cpu", bundle, BackendConfig(threads=1))
    h, w = bundle.input_hw
    for b in (1, 2, 4):
        frames = np.repeat(bundle.golden.inputs[:1], b, axis=0)
        maps, scores, tasks = backend.infer(frames)
        assert maps.shape == (b, h, w) and maps.dtype == np.float32
        assert scores.shape == (b,) and tasks.dtype == np.int64
        np.testing.assert_allclose(scores, bundle.golden.scores[0], atol=1e-5)
    with pytest.raises(ValueError):
        backend.infer(np.zeros((1, h, w, 3), np.float32))
    backend.close()


def test_data_inputs_bound_once(bundle, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    calls: list[str] = []
    real = ort.OrtValue.ortvalue_from_numpy

    def spy(array, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(array.shape))
        return real(array, *args, **kwargs)

    monkeypatch.setattr(ort.OrtValue, "ortvalue_from_numpy", staticmethod(spy))
    backend = create_backend("ort-cpu", bundle, BackendConfig())
    assert len(calls) == 1  # the reference image, once
    for _ in range(5):
        backend.infer(bundle.golden.inputs[:2])
    assert len(calls) == 1  # not re-created per frame
    backend.close()


def test_unknown_and_missing_providers(bundle) -> None:
    with pytest.raises(BackendUnavailable):
        create_backend("ort-magic", bundle, BackendConfig())
    import onnxruntime as ort

    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="CUDAExecutionProvider"):
            create_backend("ort-cuda", bundle, BackendConfig())
        with pytest.raises(BackendUnavailable, match="no backend available"):
            select_backend(bundle, BackendConfig(), ["ort-cuda"])


def test_golden_mismatch_refuses_backend(tmp_path: Path) -> None:
    bad = open_bundle(make_bundle(tmp_path / "bad", golden_offset=0.2))
    with pytest.raises(BundleError, match="golden"):
        select_backend(bad, BackendConfig(), ["ort-cpu"])
