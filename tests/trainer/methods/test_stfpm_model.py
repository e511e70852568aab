"""STFPM's math against a plain reference, and the teacher/student contract (same shape, frozen teacher)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.layers import cosine_distance
from linewatch.trainer.methods.registry import build_method
from linewatch.trainer.methods.stfpm.method import STFPM
from linewatch.trainer.methods.stfpm.model import stfpm_loss


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def test_level_distance_matches_a_numpy_reference() -> None:
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    got = cosine_distance(t, s).numpy()
    tn, sn = t.numpy(), s.numpy()
    for b in range(2):
        for i in range(3):
            for j in range(4):
                a = tn[b, :, i, j] / np.linalg.norm(tn[b, :, i, j])
                c = sn[b, :, i, j] / np.linalg.norm(sn[b, :, i, j])
                assert abs(got[b, i, j] - 0.5 * np.sum((a - c) ** 2)) < 1e-5
    assert torch.allclose(cosine_distance(t, 3.0 * t), torch.zeros(2, 3, 4), atol=1e-6)  # scale-free
    assert torch.allclose(stfpm_loss([t, t], [s, s]), 2 * cosine_distance(t, s).mean())


@pytest.fixture(scope="module")
def stfpm() -> STFPM:
    return build_method(
        "stfpm", "replay", image_size=(64, 64), progress=False, steps=2, optimizer="adam", lr=1e-3
    )


def test_map_is_the_product_of_upsampled_level_maps(stfpm: STFPM, monkeypatch: pytest.MonkeyPatch) -> None:
    g = torch.Generator().manual_seed(1)
    levels = [
        torch.rand(1, 16, 16, generator=g),
        torch.rand(1, 8, 8, generator=g),
        torch.rand(1, 4, 4, generator=g),
    ]
    monkeypatch.setattr(stfpm.model, "level_maps", lambda frames: levels)
    raw = stfpm.model.raw_map(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    product = levels[0]
    for m in levels[1:]:
        product = (
            product * F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
        )
    assert torch.allclose(raw, stfpm.model.head(product))


def test_student_is_the_teachers_architecture_from_scratch_and_only_it_learns(stfpm: STFPM) -> None:
    teacher, student = stfpm.model.teacher.net.state_dict(), stfpm.model.student.state_dict()
    assert {k: v.shape for k, v in teacher.items()} == {k: v.shape for k, v in student.items()}
    conv = next(k for k in teacher if k.endswith("conv_stem.weight"))
    assert not torch.equal(teacher[conv], student[conv])  # random init, not a copy of the teacher
    assert stfpm.config["layers"] == [1, 2, 3]
    before_t = {k: v.clone() for k, v in stfpm.model.teacher.state_dict().items()}
    before_s = stfpm.model.student.conv_stem.weight.detach().clone()
    rng = np.random.default_rng(0)
    stfpm.fit_task("noise", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    after_t = stfpm.model.teacher.state_dict()
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)  # BN statistics included
    assert not torch.equal(before_s, stfpm.model.student.conv_stem.weight)
    assert stfpm.training_log[-1]["steps"] == 2 and stfpm.slots == [["noise"]]


def test_unknown_strategy_or_optimizer_is_refused() -> None:
    with pytest.raises(ValueError, match="strategy"):
        build_method("stfpm", "cl", image_size=(64, 64))
    with pytest.raises(ValueError, match="optimizer"):
        build_method("stfpm", "replay", image_size=(64, 64), optimizer="lbfgs")
