"""SimSiam extractor: a few steps on tiny images give loadable backbone weights and a record of the data."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from linewatch.trainer.backbones import create_feature_extractor
from linewatch.trainer.cli import main
from linewatch.trainer.data.generate import generate_dataset
from linewatch.trainer.methods.registry import build_method


def test_train_extractor_cli_and_fewshot_record(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    data = tmp_path / "data"
    generate_dataset(data, ["brick", "camera"], n_train=5, n_test_good=1, n_test_defect=1, size=64, seed=0)
    out = tmp_path / "simsiam.pt"
    argv = ["train-extractor", "--data", f"mvtec:{data}", "--tasks", "brick,camera", "--out", str(out)]
    assert main([*argv, "--steps", "3", "--batch", "4", "--image-size", "64"]) == 0
    record = json.loads(Path(f"{out}.json").read_text())
    assert record["method"] == "simsiam" and record["config"]["steps"] == 3
    assert record["trained_on"] == {
        t: {"data": f"mvtec:{data}", "train_good": 5} for t in ("brick", "camera")
    }
    assert all(-1.0 <= record[k] <= 1.0 for k in ("loss_first10", "loss_last10"))  # a negative cosine
    tuned = create_feature_extractor(weights=out).net.state_dict()
    imagenet = create_feature_extractor().net.state_dict()
    assert tuned.keys() == imagenet.keys()
    assert any(not torch.equal(tuned[k], imagenet[k]) for k in tuned if tuned[k].is_floating_point())
    method = build_method("fewshot", image_size=(64, 64), backbone_weights=out, progress=False)
    assert method.section().extractor["trained_on"] == record["trained_on"]
    assert build_method("fewshot", image_size=(64, 64), progress=False).section().extractor == {
        "kind": "imagenet"
    }
