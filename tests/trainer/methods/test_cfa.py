"""CFA's math against a plain reference, its bank (per-task centres, grown per task; naive keeps the
latest), and the refresh of a known task that changes the bank only, proven by a bank-only bundle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.cfa.method import CFA
from linewatch.trainer.methods.cfa.model import soft_boundary_loss, squared_distances
from linewatch.trainer.methods.registry import build_method

HW = (32, 32)  # a 4x4 patch grid at stride 8: 16 centres per task


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def _images(seed: int, n: int = 6) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *HW, 3), dtype=np.uint8)


def _cfa(strategy: str = "replay") -> CFA:
    return build_method(
        "cfa", strategy, image_size=HW, progress=False, steps=2, eval_every=1, dim=16, replay={"size": 8}
    )


def test_loss_and_scores_match_a_numpy_reference() -> None:
    g = torch.Generator().manual_seed(0)
    phi, bank = torch.randn(2, 5, 4, generator=g), torch.randn(7, 4, generator=g)
    k, j, r, nu, alpha = 3, 2, 0.5, 1e-2, 0.1
    p, c = phi.numpy().astype(np.float64), bank.numpy().astype(np.float64)
    d2 = ((p[:, :, None, :] - c[None, None]) ** 2).sum(-1)
    np.testing.assert_allclose(squared_distances(phi, bank).numpy(), d2, rtol=1e-4, atol=1e-4)
    top = np.sort(d2, axis=-1)
    att = np.maximum(top[..., :k] - r**2, 0).mean() / nu
    rep = np.maximum(r**2 - top[..., k : k + j] - alpha, 0).mean() / nu
    got = float(soft_boundary_loss(phi, bank, k, j, r, nu, alpha))
    assert abs(got - (att + rep)) < 1e-3 * max(1.0, att + rep)
    model = _cfa().model
    model.k, model.radius = k, r
    w = np.exp(-top[..., :k]) / np.exp(-top[..., :k]).sum(-1, keepdims=True)
    expected = w[..., 0] * top[..., 0] - r**2  # softmin weight of the nearest times its distance, - r^2
    np.testing.assert_allclose(model.patch_scores(phi, bank).numpy(), expected, rtol=1e-4, atol=1e-4)


def test_centres_are_the_mean_descriptor_per_position_and_the_bank_grows_per_task() -> None:
    cfa, a, b = _cfa(), _images(0), _images(1)
    with torch.inference_mode():
        phi = cfa.model.describe(torch.from_numpy(a))[0]
    expected_a = phi.mean(0)  # taken before training on the task, as the paper initialises it
    frozen = {k: v.clone() for k, v in cfa.model.extractor.state_dict().items()}
    before = cfa.model.descriptor.weight.detach().clone()
    cfa.fit_task("a", a)
    assert torch.allclose(cfa.bank(), expected_a, atol=1e-5) and cfa.bank().shape == (16, 16)
    assert not torch.equal(before, cfa.model.descriptor.weight)  # the descriptor learned
    assert all(torch.equal(frozen[k], v) for k, v in cfa.model.extractor.state_dict().items())
    expected_b = cfa.centres(b)
    cfa.fit_task("b", b)
    assert cfa.bank().shape == (32, 16) and torch.allclose(cfa.bank()[:16], expected_a, atol=1e-5)
    assert torch.allclose(cfa.bank()[16:], expected_b, atol=1e-5)
    assert cfa.training_log[1]["replayed_images"] > 0 and cfa.buffer.counts() == {"a": 4, "b": 4}
    naive = _cfa("naive")
    naive.fit_task("a", a)
    naive.fit_task("b", b)
    assert naive.bank_tasks == ["b"] and naive.bank().shape == (16, 16) and naive.tasks == ["a", "b"]
    assert len(naive.buffer) == 0 and naive.training_log[1]["replayed_images"] == 0


def test_refreshing_a_known_task_is_a_bank_only_bundle(tmp_path) -> None:
    """More images for a known task: new centres for it, the same graph, so a bank-only bundle applies."""
    from linewatch.edge.model.bundle import check_golden, open_bundle
    from linewatch.export.bundle_writer import BundleInfo, write_bundle
    from linewatch.export.parity import ort_infer, ort_session

    cfa, a, b = _cfa(), _images(0), _images(1)
    cfa.fit_task("a", a)
    cfa.fit_task("b", b)
    cfa.calibrate({"a": a[:3], "b": b[:3]})
    info = BundleInfo(name="cfa", method="cfa", tasks=["a", "b"], strategy="replay")
    golden = np.concatenate([a[:2], b[:2]])
    full = write_bundle(
        cfa.scoring_graph(), tmp_path / "cfa-v1", info=info, golden_inputs=golden, max_batch=2
    )
    assert full.static is not None and full.static.ok
    old_bank, descriptor = cfa.bank().clone(), cfa.model.descriptor.weight.detach().clone()

    cfa.fit_task("a", _images(2, 8))  # a refresh: trains nothing
    assert torch.equal(descriptor, cfa.model.descriptor.weight) and cfa.bank().shape == old_bank.shape
    assert not torch.allclose(cfa.bank()[:16], old_bank[:16]) and torch.equal(cfa.bank()[16:], old_bank[16:])
    assert cfa.training_log[-1] == {"task": "a", "index": 2, "steps": 0, "refresh": "bank only"}
    cfa.calibrate({"a": a[:3], "b": b[:3]})
    refresh = write_bundle(
        cfa.scoring_graph(), tmp_path / "cfa-v2", info=info, golden_inputs=golden, bank_only=True
    )
    assert refresh.version == 2 and not (refresh.path / "model.onnx").exists()
    applied = open_bundle(refresh.path)
    session = ort_session(applied.onnx_path)
    assert check_golden(applied, lambda f: ort_infer(session, applied.data_inputs, f, 2)).ok
    assert applied.graph_sha256 == open_bundle(full.path).graph_sha256
