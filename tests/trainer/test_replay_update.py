"""`update` continues a saved run, replay buffer included: the same result as fitting the whole sequence.

State is safetensors + JSON (the buffer's image bytes as a uint8 tensor), never a pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from trained_methods_kit import TASKS, get_kit, replay_trained_methods, train_config

from linewatch.trainer.continual import fit, update

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("method", replay_trained_methods())
def test_update_equals_fitting_the_whole_sequence(
    method: str, tmp_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    kit = get_kit(tmp_path_factory)
    teacher = kit.teacher() if method == "efficientad" else None
    cfg = train_config(
        method, "replay", teacher, image_size=(32, 32), steps=3, eval_every=1, replay={"size": 20}
    )
    quiet = {"log": lambda _m: None}
    whole = fit(cfg, kit.spec, list(TASKS[:2]), tmp_path / "whole", **quiet)
    fit(cfg, kit.spec, list(TASKS[:1]), tmp_path / "step", **quiet)
    stepped = update(tmp_path / "step", kit.spec, list(TASKS[1:2]), **quiet)
    assert stepped["matrix"] == whole["matrix"]
    a = load_file(str(tmp_path / "whole" / "state" / "main.safetensors"))
    b = load_file(str(tmp_path / "step" / "state" / "main.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert a["replay.data"].dtype == torch.uint8 and a["replay.data"].numel() > 0
    meta = json.loads((tmp_path / "step" / "state" / "main.json").read_text())
    assert meta["replay"]["tasks"] == list(TASKS[:2]) and [t["index"] for t in meta["training_log"]] == [0, 1]
    assert not list((tmp_path / "step").rglob("*.pkl")) and not list((tmp_path / "step").rglob("*.pt"))
