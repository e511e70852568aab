"""`linewatch-edge onboard`: learn a part from a folder, remove it again; refusals exit 2 and change nothing."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from linewatch.contract.store import store_target
from linewatch.edge.cli import EXIT_OK, EXIT_USAGE, main


def _config(tmp_path: Path, kit, sign_key: Path) -> Path:
    cfg = tmp_path / "edge.toml"
    cfg.write_text(
        f'[reload]\nkey = "{kit.release_pub}"\nbox_keys = ["{kit.box_pub}"]\nrequire_signature = true\n'
        f'[onboard]\nkey = "{sign_key}"\n'
    )
    return cfg


def test_onboard_and_remove_from_the_command_line(
    fewshot, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    images = tmp_path / "support"
    images.mkdir()
    for p in sorted((fewshot.data / "brick" / "train" / "good").glob("*.png"))[:3]:
        shutil.copy(p, images / p.name)
    cfg = _config(tmp_path, fewshot, fewshot.box_key)
    base = ["onboard", "--bundle", str(fewshot.store), "--config", str(cfg)]
    assert main([*base, "--task", "brick", "--images", str(images)]) == EXIT_OK
    out = json.loads(capsys.readouterr().out)
    assert out["version"] == 2 and out["tasks"] == ["camera", "brick", ""]
    assert main(["verify", "--bundle", str(fewshot.store), "--config", str(cfg)]) == EXIT_OK
    capsys.readouterr()
    assert main([*base, "--task", "brick", "--remove"]) == EXIT_OK
    assert json.loads(capsys.readouterr().out)["tasks"] == ["camera", "", ""]
    before = store_target(fewshot.store)
    other = _config(tmp_path, fewshot, fewshot.other_key)
    args = ["onboard", "--bundle", str(fewshot.store), "--config", str(other), "--task", "brick"]
    assert main([*args, "--images", str(images)]) == EXIT_USAGE
    assert "not allowed by reload.box_keys" in capsys.readouterr().err
    assert store_target(fewshot.store) == before
