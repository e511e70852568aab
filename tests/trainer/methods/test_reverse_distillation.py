"""Reverse Distillation's math against a plain reference, and the encoder/bottleneck/decoder contract:
the student gives back every teacher level (any input size), and only the bottleneck and decoder learn."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.layers import cosine_distance
from linewatch.trainer.methods.registry import build_method
from linewatch.trainer.methods.reverse_distillation.method import ReverseDistillation
from linewatch.trainer.methods.reverse_distillation.model import rd_loss


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def test_level_map_and_loss_match_a_numpy_reference() -> None:
    g = torch.Generator().manual_seed(0)
    t, s = torch.randn(2, 5, 3, 4, generator=g), torch.randn(2, 5, 3, 4, generator=g)
    got = cosine_distance(t, s).numpy()
    tn, sn = t.numpy(), s.numpy()
    for b in range(2):
        for i in range(3):
            for j in range(4):
                a, c = tn[b, :, i, j], sn[b, :, i, j]
                assert abs(got[b, i, j] - (1 - a @ c / np.linalg.norm(a) / np.linalg.norm(c))) < 1e-5
    assert torch.allclose(cosine_distance(t, 2.0 * t), torch.zeros(2, 3, 4), atol=1e-6)  # scale-free
    # The loss flattens each image's level into one vector (the paper's), not per position.
    flat = [
        1 - (tn[b].ravel() @ sn[b].ravel()) / np.linalg.norm(tn[b]) / np.linalg.norm(sn[b]) for b in range(2)
    ]
    assert abs(float(rd_loss([t, t], [s, s])) - 2 * np.mean(flat)) < 1e-5


@pytest.fixture(scope="module")
def rd() -> ReverseDistillation:
    return build_method(
        "reverse_distillation", "replay", image_size=(64, 64), progress=False, steps=2, blocks=1
    )


def test_map_is_the_sum_of_upsampled_level_maps(rd: ReverseDistillation, monkeypatch) -> None:
    g = torch.Generator().manual_seed(1)
    levels = [
        torch.rand(1, 16, 16, generator=g),
        torch.rand(1, 8, 8, generator=g),
        torch.rand(1, 4, 4, generator=g),
    ]
    monkeypatch.setattr(rd.model, "level_maps", lambda frames: levels)
    raw = rd.model.raw_map(torch.zeros(1, 64, 64, 3, dtype=torch.uint8))
    total = levels[0]
    for m in levels[1:]:
        total = total + F.interpolate(m[:, None], size=(16, 16), mode="bilinear", align_corners=False)[:, 0]
    assert torch.allclose(raw, rd.model.head(total))


@pytest.mark.parametrize("hw", [(64, 64), (72, 40)])
def test_the_student_gives_back_every_teacher_level(hw: tuple[int, int]) -> None:
    method = build_method("reverse_distillation", "replay", image_size=hw, progress=False, blocks=1)
    t, s = method.model.features(torch.zeros(2, *hw, 3, dtype=torch.uint8))
    assert [x.shape for x in t] == [x.shape for x in s] and len(t) == 3
    assert method.config["layers"] == [1, 2, 3] and "Wide-ResNet" in method.metadata()["teacher"]["note"]


def test_only_the_bottleneck_and_decoder_learn(rd: ReverseDistillation) -> None:
    before_t = {k: v.clone() for k, v in rd.model.teacher.state_dict().items()}
    before_s = {k: v.clone() for k, v in rd.model.trainable().state_dict().items()}
    rng = np.random.default_rng(0)
    rd.fit_task("noise", rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8))
    after_t = rd.model.teacher.state_dict()
    assert all(torch.equal(before_t[k], after_t[k]) for k in before_t)  # BN statistics included
    after_s = rd.model.trainable().state_dict()
    assert any(not torch.equal(before_s[k], after_s[k]) for k in before_s if k.startswith("bottleneck"))
    assert any(not torch.equal(before_s[k], after_s[k]) for k in before_s if k.startswith("decoder"))
    tensors, _ = rd.state()
    assert all(k.startswith(("student.bottleneck.", "student.decoder.", "replay.")) for k in tensors)
    assert rd.training_log[-1]["steps"] == 2 and rd.slots == [["noise"]]
