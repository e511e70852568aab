"""EfficientAD's pieces against the paper: PDN shapes, autoencoder bottleneck, hard loss, map normalisation,
and the offline teacher distillation step (cache, provenance, CLI, refusal of a mismatched teacher)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.efficientad.distill import (
    DistillConfig,
    TeacherError,
    cached_teacher,
    file_sha256,
    load_teacher,
)
from linewatch.trainer.methods.efficientad.method import hard_feature_loss
from linewatch.trainer.methods.efficientad.model import EfficientADModel
from linewatch.trainer.methods.efficientad.networks import AutoEncoder, pdn, pdn_output_hw
from linewatch.trainer.methods.registry import build_method


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


def _convs(m: nn.Module) -> list[nn.Conv2d]:
    return [c for c in m.modules() if isinstance(c, nn.Conv2d)]


def test_pdn_s_and_m_as_published() -> None:
    s, m = pdn("s"), pdn("m")
    assert len(_convs(s)) == 4 and len(_convs(m)) == 6
    assert [c.out_channels for c in _convs(s)] == [128, 256, 256, 384]
    assert [c.out_channels for c in _convs(m)] == [256, 512, 512, 512, 384, 384]
    assert all(c.padding == (0, 0) for c in _convs(s) + _convs(m))  # unpadded: 33 px receptive field
    assert pdn_output_hw((256, 256)) == (56, 56)
    for size in ("s", "m"):
        for padding in (False, True):
            net = pdn(size, 16, 0.125, padding)
            for hw in ((64, 64), (96, 72)):
                out = net(torch.zeros(1, 3, *hw))
                assert tuple(out.shape[-2:]) == pdn_output_hw(hw, padding)
    assert pdn_output_hw((64, 64), padding=True) == (16, 16)


def test_student_has_twice_the_channels_and_the_autoencoder_a_64_channel_bottleneck() -> None:
    model = EfficientADModel("s", 32, 0.125, (64, 64), padding=True)
    assert _convs(model.student)[-1].out_channels == 64 and _convs(model.teacher)[-1].out_channels == 32
    assert not any(p.requires_grad for p in model.teacher.parameters())
    ae = AutoEncoder((256, 256), (56, 56), 384)
    x = torch.zeros(2, 3, 256, 256)
    assert ae.encoder(x).shape == (2, 64, 1, 1)
    assert ae(x).shape == (2, 384, 56, 56)
    small = AutoEncoder((64, 64), (16, 16), 32, width=0.25)
    assert small.encoder(torch.zeros(1, 3, 64, 64)).shape == (1, 64, 1, 1)  # width never shrinks it


def test_hard_feature_loss_is_the_mean_above_the_quantile() -> None:
    d = torch.rand(4, 8, 10, 10, generator=torch.Generator().manual_seed(0))
    q = torch.quantile(d.flatten(), 0.99)
    expected = d[d >= q].mean()
    assert torch.allclose(hard_feature_loss(d, 0.99), expected, atol=1e-6)
    assert torch.allclose(hard_feature_loss(d, 0.0), d.mean())


def test_maps_are_normalised_by_their_quantiles(monkeypatch: pytest.MonkeyPatch) -> None:
    model = EfficientADModel("s", 8, 0.125, (64, 64), sigma=2.0, padding=True)
    q = torch.tensor([1.0, 3.0, 10.0, 30.0])  # local q_a, q_b; global q_a, q_b

    def fake(frames: torch.Tensor):
        b = frames.shape[0]
        return torch.full((b, 16, 16), 1.0), torch.full((b, 16, 16), 30.0)  # local at q_a, global at q_b

    monkeypatch.setattr(model, "grid_maps", fake)
    raw = model.raw_map(torch.zeros(2, 64, 64, 3, dtype=torch.uint8), q)
    assert raw.shape == (2, 64, 64)
    assert torch.allclose(raw, torch.full_like(raw, 0.5 * 0.0 + 0.5 * 0.1), atol=1e-5)
    # the unpadded network leaves a border; padded raw distance 0 is the lowest score there
    unpadded = EfficientADModel("s", 8, 0.125, (64, 64), sigma=2.0)
    assert unpadded.pad == (4, 4, 4, 4)
    monkeypatch.setattr(
        unpadded, "grid_maps", lambda f: (torch.full((1, 8, 8), 3.0), torch.full((1, 8, 8), 30.0))
    )
    raw = unpadded.raw_map(torch.zeros(1, 64, 64, 3, dtype=torch.uint8), q)
    assert float(raw[0, 32, 32]) > float(raw[0, 1, 1])


TINY = DistillConfig(width=0.125, out_channels=16, padding=True, input_hw=(40, 40), steps=3, pool=8, lr=1e-3)


def test_distilled_teacher_is_cached_with_its_provenance(tmp_path: Path) -> None:
    path = cached_teacher(TINY, tmp_path, progress=False)
    assert path.name == TINY.filename() and path.parent == tmp_path
    tensors, record = load_teacher(path)
    assert record["config"]["width"] == 0.125 and record["key"] == TINY.key()
    assert record["target"].startswith("tf_efficientnet_lite0") and len(record["sources"]) >= 10
    assert record["device"] == "cpu"  # where it ran: provenance, not part of the key
    assert tensors["mean"].shape == (1, 16, 1, 1) and any(k.startswith("pdn.") for k in tensors)
    mtime = path.stat().st_mtime_ns
    assert cached_teacher(TINY, tmp_path, progress=False) == path and path.stat().st_mtime_ns == mtime
    assert DistillConfig(**{**TINY.__dict__, "seed": 1}).key() != TINY.key()

    tiny = {"image_size": (40, 40), "width": 0.125, "out_channels": 16, "padding": True, "teacher": path}
    method = build_method("efficientad", "replay", progress=False, **tiny)
    method._ensure_teacher()
    assert method.teacher_info["sha256"] == file_sha256(path) and method.teacher_info["key"] == TINY.key()
    assert torch.equal(method.model.teacher_mean, tensors["mean"])

    wrong = build_method("efficientad", "replay", **{**tiny, "width": 0.25})
    with pytest.raises(TeacherError, match="PDN"):
        wrong.fit_task("x", np.zeros((4, 40, 40, 3), np.uint8))
    with pytest.raises(TeacherError, match="not found"):
        load_teacher(tmp_path / "missing.safetensors")


def test_distill_teacher_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from linewatch.trainer.cli import main

    args = ["--width", "0.125", "--out-channels", "16", "--padding", "--image-size", "40", "--steps", "2"]
    args += ["--pool", "8", "--lr", "1e-3", "--no-progress"]
    assert main(["distill-teacher", *args, "--out", str(tmp_path / "t.safetensors")]) == 0
    assert "teacher: " in capsys.readouterr().out
    _, record = load_teacher(tmp_path / "t.safetensors")
    assert record["config"]["steps"] == 2 and json.dumps(record)
    assert main(["distill-teacher", *args, "--out", str(tmp_path / "t.safetensors")]) == 2  # exists


@pytest.mark.gpu
def test_distillation_runs_on_a_cuda_device_and_returns_a_cpu_teacher(tmp_path: Path) -> None:
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device: distillation on the GPU is not reachable here")
    path = cached_teacher(TINY, tmp_path, progress=False, device="cuda")
    tensors, record = load_teacher(path)
    assert record["device"] == "cuda" and record["key"] == TINY.key() and path.name == TINY.filename()
    assert all(t.device.type == "cpu" for t in tensors.values())
    assert np.isfinite(record["final_loss"])
