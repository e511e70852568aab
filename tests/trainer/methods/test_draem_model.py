"""DRAEM's pieces: focal loss and SSIM against references, the paper's pooled map, the U-Net's
shapes at any size, and the training synthesis (anomalies only inside their masks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.draem.method import DRAEM
from linewatch.trainer.methods.draem.model import DRAEMModel, focal_loss, pool_kernel, ssim
from linewatch.trainer.methods.registry import build_method


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def test_focal_loss_matches_its_definition() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 2, 3, 4, generator=g)
    mask = (torch.rand(2, 3, 4, generator=g) > 0.5).float()
    p = torch.softmax(logits, 1).numpy()
    m = mask.numpy().astype(int)
    pt = np.where(m == 1, p[:, 1], p[:, 0])
    expected = np.mean(-((1 - pt) ** 2) * np.log(pt))
    assert abs(float(focal_loss(logits, mask)) - expected) < 1e-6


def test_ssim_is_one_on_equal_images_and_drops_with_noise() -> None:
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 32, 32, generator=g)
    assert abs(float(ssim(a, a)) - 1.0) < 1e-5
    noisy = (a + 0.3 * torch.randn(a.shape, generator=g)).clamp(0, 1)
    assert float(ssim(a, noisy)) < 0.8


def test_map_is_the_average_pooled_anomaly_softmax_at_any_size() -> None:
    assert pool_kernel((256, 256)) == 21 and pool_kernel((64, 64)) == 5 and pool_kernel((16, 16)) == 3
    model = DRAEMModel((48, 80), 4, 4).eval()
    frames = torch.randint(0, 256, (2, 48, 80, 3), dtype=torch.uint8)
    with torch.inference_mode():
        rec, logits = model.outputs(model.input(frames))
        raw = model.raw_map(frames)
    assert rec.shape == (2, 3, 48, 80) and logits.shape == (2, 2, 48, 80)
    k = model.kernel
    expected = F.avg_pool2d(torch.softmax(logits, 1)[:, 1:], k, stride=1, padding=k // 2)[:, 0]
    assert raw.shape == (2, 48, 80) and torch.allclose(raw, expected, atol=1e-6)


@pytest.fixture(scope="module")
def draem() -> DRAEM:
    return build_method(
        "draem", "replay", image_size=(64, 64), progress=False, steps=2, recon_width=4, disc_width=4
    )


def test_synthesis_changes_only_masked_pixels_on_about_half_the_images(draem: DRAEM) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (40, 64, 64, 3), dtype=np.uint8)
    aug, masks = draem.synthesize(frames, rng)
    changed = np.any(aug != frames, axis=-1)
    assert not (changed & (masks == 0)).any()
    with_anomaly = (masks.reshape(40, -1).max(1) > 0).sum()
    assert 10 <= with_anomaly <= 30  # anomaly_prob 0.5 (a drawn mask may come out empty)
    with pytest.raises(ValueError, match="texture_sources"):
        build_method("draem", "replay", image_size=(64, 64), texture_sources=["nope"]).textures()


def test_both_sub_networks_learn(draem: DRAEM) -> None:
    before_r = draem.model.reconstructive.out.weight.detach().clone()
    before_d = draem.model.discriminative.out.weight.detach().clone()
    rng = np.random.default_rng(1)
    draem.fit_task("noise", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    assert not torch.equal(before_r, draem.model.reconstructive.out.weight)
    assert not torch.equal(before_d, draem.model.discriminative.out.weight)
    assert draem.training_log[-1]["steps"] == 2 and draem.slots == [["noise"]]
