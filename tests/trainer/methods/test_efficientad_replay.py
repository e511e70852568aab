"""EfficientAD's replay run records which distilled teacher it used (the shared replay assertions
are in test_replay_training.py)."""

from __future__ import annotations

import json

import pytest
from trained_methods_kit import get_kit

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    kit = get_kit(tmp_path_factory)
    return {"replay": kit.run("efficientad", "replay")}, kit


def test_teacher_provenance_is_recorded(runs) -> None:
    from linewatch.trainer.methods.efficientad.distill import file_sha256

    (by_strategy, kit) = runs
    run_dir, metrics = by_strategy["replay"]
    teacher = metrics["method_metadata"]["main"]["teacher"]
    assert teacher["sha256"] == file_sha256(kit.teacher()) and teacher["file"] == str(kit.teacher())
    assert "not the published" in teacher["note"]
    state = json.loads((run_dir / "state" / "main.json").read_text())
    assert state["teacher"]["sha256"] == teacher["sha256"]
    q = metrics["calibration"]["main"]["map_quantiles"]
    assert (q["q_a"], q["q_b"]) == (0.9, 0.995) and q["local"][0] < q["local"][1]
