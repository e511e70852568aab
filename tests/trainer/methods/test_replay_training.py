"""EfficientAD and STFPM on the generated 3-task sequence: replay beats naive fine-tuning, and
metrics.json says what the buffer costs. Both learn through `trainer/methods/replay_training.py`, so the same
assertions hold for each.

The runs are made once per session by `trained_methods_kit` (64 px, brief training) and reused by the
export and edge tests.
"""

from __future__ import annotations

import json

import pytest
from trained_methods_kit import REPLAY_SIZE, TASKS, get_kit

from linewatch.trainer.methods.registry import available

pytestmark = pytest.mark.slow
METHODS = ("efficientad", "stfpm")


@pytest.fixture(scope="module", params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, method: str):
    kit = get_kit(tmp_path_factory)
    return {s: kit.run(method, s) for s in ("naive", "replay")}, kit


def _table(metrics: dict) -> str:
    rows = [
        " ".join("  -  " if v is None else f"{v:.3f}" for v in r) for r in metrics["matrix"]["image_auroc"]
    ]
    return f"{metrics['strategy']:>6}: final {metrics['final']['image_auroc']:.3f} forgetting " + (
        f"{metrics['forgetting']['image_auroc']:.3f} | " + " / ".join(rows)
    )


def test_replay_beats_naive_on_final_auroc_and_forgetting(runs, method: str) -> None:
    (by_strategy, kit) = runs
    naive, replay = by_strategy["naive"][1], by_strategy["replay"][1]
    print("\n" + _table(naive) + "\n" + _table(replay))
    print("seconds:", json.dumps({k: round(v, 1) for k, v in kit.seconds.items()}))
    assert method in available() and available()[method] == ("replay", "naive")
    assert naive["tasks"] == replay["tasks"] == list(TASKS)
    assert replay["final"]["image_auroc"] >= naive["final"]["image_auroc"] + 0.1
    assert replay["forgetting"]["image_auroc"] <= naive["forgetting"]["image_auroc"] - 0.1
    assert replay["final"]["pixel_auroc"] > naive["final"]["pixel_auroc"]
    for m in (naive, replay):
        assert len(m["timings"]) == 3 and all(t["fit_s"] > 0 for t in m["timings"])
        assert "task_inference_accuracy" not in m  # one shared slot: nothing to infer


def test_metrics_report_the_buffer_honestly(runs) -> None:
    (by_strategy, _) = runs
    replay = by_strategy["replay"][1]["method_metadata"]["main"]
    naive = by_strategy["naive"][1]["method_metadata"]["main"]
    buf = by_strategy["replay"][1]["replay_buffer"]  # a top-level key of metrics.json
    assert buf == replay["replay_buffer"]
    assert buf["capacity"] == REPLAY_SIZE and buf["images"] == REPLAY_SIZE
    assert buf["per_task"] == {t: REPLAY_SIZE // 3 for t in TASKS}  # older shares shrank to 16 each
    assert 0 < buf["bytes"] < buf["raw_bytes"] == REPLAY_SIZE * 64 * 64 * 3 and buf["format"] == "png"
    naive_buf = by_strategy["naive"][1]["replay_buffer"]
    assert naive_buf["images"] == 0 and naive_buf["bytes"] == 0 and naive_buf == naive["replay_buffer"]
    calibration = by_strategy["replay"][1]["calibration"]["main"]  # beside the metadata, not in it
    assert calibration["slots"] == ["+".join(TASKS)] and len(calibration["center"]) == 1
    assert "slots" not in replay and "replay_buffer" not in calibration
    log = replay["training"]
    assert [t["task"] for t in log] == list(TASKS)
    assert log[0]["replayed_images"] == 0 and all(t["replayed_images"] > 0 for t in log[1:])
    assert all(t["held_out_images"] >= 2 and t["best_val_loss"] is not None for t in log)
