"""EfficientAD's teacher on a machine without a GPU (issue 18): resumable distillation, the
up-front estimate, the CPU budget chosen automatically, and `fit --teacher FILE` checked first."""

from __future__ import annotations

import functools
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from trained_methods_kit import limit_threads

from linewatch.trainer.methods.efficientad.distill import (
    CPU_BUDGET,
    GPU_BUDGET,
    TEACHER_FORMAT,
    DistillConfig,
    cached_teacher,
    checkpoint_path,
    distill_teacher,
    load_teacher,
    save_teacher,
)
from linewatch.trainer.methods.efficientad.networks import pdn
from linewatch.trainer.methods.registry import build_method

TINY = DistillConfig(width=0.125, out_channels=16, padding=True, input_hw=(40, 40), steps=6, pool=8, lr=1e-3)
TINY_SECTION = "[efficientad]\nwidth = 0.125\nout_channels = 16\npadding = true\n"


@pytest.fixture(autouse=True)
def _threads():
    limit_threads()


class Interrupt(Exception):
    pass


def test_an_interrupted_distillation_resumes_to_the_same_teacher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from linewatch.trainer.methods.efficientad import distill

    # three distillations: build the (frozen, pretrained) backbone once
    monkeypatch.setattr(
        distill, "create_feature_extractor", functools.cache(distill.create_feature_extractor)
    )
    said: list[str] = []
    whole = cached_teacher(
        TINY, tmp_path / "a", progress=False, log=said.append, device="cpu", checkpoint_every=2
    )
    assert not checkpoint_path(TINY, tmp_path / "a").exists()  # removed once the teacher is saved
    assert "no cached EfficientAD teacher" in said[0] and "6 steps of 8 images" in said[0]
    # the estimate, after one warm-up step and three timed ones, before the rest of the loop
    assert said[1].startswith("distilling the EfficientAD teacher: 2 steps left, about ")
    assert "on this CPU (measured " in said[1] and "`--teacher FILE` distilled on another machine" in said[1]

    ckpt = checkpoint_path(TINY, tmp_path / "b")

    def stop(step: int, *_: object) -> None:
        if step == 5:  # after the checkpoint at step 4: step 5 is lost and done again
            raise Interrupt

    with pytest.raises(Interrupt):
        distill_teacher(TINY, progress=False, device="cpu", checkpoint=ckpt, checkpoint_every=2, on_step=stop)
    assert ckpt.is_file() and torch.load(ckpt, weights_only=True)["step"] == 4
    said.clear()
    resumed = cached_teacher(
        TINY, tmp_path / "b", progress=False, log=said.append, device="cpu", checkpoint_every=2
    )
    assert any("resuming the teacher's distillation at step 4 of 6" in m for m in said)
    a, rec_a = load_teacher(whole)
    b, rec_b = load_teacher(resumed)
    assert rec_b["resumed_at"] == 4 and rec_a["resumed_at"] == 0 and rec_a["key"] == rec_b["key"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert rec_a["final_loss"] == rec_b["final_loss"]  # the losses before the interruption came back too
    assert not ckpt.exists()


def test_the_cpu_budget_is_the_default_without_a_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cpu = build_method("efficientad", "replay", progress=False)  # image_size 256
    assert cpu.device.type == "cpu"
    d = cpu.distill_config()
    assert (d.steps, d.pool, d.crop_hw) == (
        CPU_BUDGET.steps,
        CPU_BUDGET.pool,
        (CPU_BUDGET.crop, CPU_BUDGET.crop),
    )
    assert (
        d.train_hw == (CPU_BUDGET.crop, CPU_BUDGET.crop)
        and d.input_hw == (256, 256)
        and d.lr == CPU_BUDGET.lr
    )
    mine = build_method(
        "efficientad", "replay", progress=False, distill_steps=50, distill_crop=0
    ).distill_config()
    assert (mine.steps, mine.pool, mine.crop_hw) == (
        50,
        CPU_BUDGET.pool,
        None,
    )  # each setting overrides its part

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the GPU path: not reachable here
    gpu = build_method("efficientad", "replay", progress=False)
    assert gpu.device.type == "cuda"
    d = gpu.distill_config()
    assert (d.steps, d.pool, d.crop_hw, d.lr) == (GPU_BUDGET.steps, GPU_BUDGET.pool, None, GPU_BUDGET.lr)
    assert (GPU_BUDGET.steps, GPU_BUDGET.pool, GPU_BUDGET.lr) == (10_000, 0, 1e-4)
    assert d.key() == DistillConfig(input_hw=(256, 256)).key()  # the published recipe keeps its cache key
    assert build_method("efficientad", "replay", progress=False, device="cpu").device.type == "cpu"


def _teacher_file(path: Path, width: float = 0.125, claimed_width: float = 0.125) -> Path:
    """A teacher file written directly (random PDN weights): what matters here is the format."""
    cfg = DistillConfig(width=claimed_width, out_channels=16, padding=True, input_hw=(40, 40), steps=1)
    record = {"format": TEACHER_FORMAT, "key": cfg.key(), "config": asdict(cfg), "device": "cuda"}
    net = pdn("s", 16, width, True)
    return save_teacher(path, net, torch.zeros(1, 16, 1, 1), torch.ones(1, 16, 1, 1), record)


def _fit(tmp_path: Path, *extra: str) -> list[str]:
    config = tmp_path / "train.toml"
    config.write_text(TINY_SECTION + f'teacher_cache = "{tmp_path / "cache"}"\n')
    args = [
        "fit",
        "--data",
        f"mvtec:{tmp_path / 'no-such-dataset'}",
        "--tasks",
        "a",
        "--method",
        "efficientad",
    ]
    return [*args, "--out", str(tmp_path / "run"), "--config", str(config), "--image-size", "40", *extra]


def test_fit_says_up_front_that_it_distils_on_the_cpu(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from linewatch.trainer.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(_fit(tmp_path)) == 2  # the dataset does not exist: the message came first
    out = capsys.readouterr()
    assert "EfficientAD teacher: none cached; the first task starts by distilling one on this CPU" in out.out
    assert f"{CPU_BUDGET.steps} steps of 8 images" in out.out and "--teacher FILE" in out.out
    assert "no-such-dataset" in out.err


def test_fit_takes_a_teacher_file_and_refuses_a_wrong_one_before_reading_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from linewatch.trainer.cli import main

    good = _teacher_file(tmp_path / "good.safetensors")
    assert main(_fit(tmp_path, "--teacher", str(good))) == 2  # accepted; then the missing dataset
    out = capsys.readouterr()
    assert f"EfficientAD teacher: {good} (distilled on cuda" in out.out and "no-such-dataset" in out.err

    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(good.read_bytes()[:200])
    other = _teacher_file(tmp_path / "other.safetensors", width=0.25, claimed_width=0.25)
    lying = _teacher_file(tmp_path / "lying.safetensors", width=0.25, claimed_width=0.125)
    expected = {
        corrupt: "is not a readable teacher file",
        other: "is a PDN {'size': 's', 'out_channels': 16, 'width': 0.25",
        lying: "does not hold a PDN-S as configured: pdn.",
        tmp_path / "missing.safetensors": "teacher file not found",
    }
    for path, message in expected.items():
        assert main(_fit(tmp_path, "--teacher", str(path))) == 2
        out = capsys.readouterr()
        assert (
            message in out.err and "no-such-dataset" not in out.err and "EfficientAD teacher:" not in out.out
        )

    assert main(_fit(tmp_path, "--teacher", str(good), "--method", "patchcore")) == 2
    assert "--teacher: not a setting of method patchcore" in capsys.readouterr().err
