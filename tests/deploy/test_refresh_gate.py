"""The release gate: which updated models may replace the live one, and why not."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linewatch.deploy.refresh.gate import decide, read_eval

BEFORE = {"brick": 0.99, "gravel": 0.97, "grass": 0.95}


def test_passes_when_nothing_drops_and_new_task_reaches_floor() -> None:
    after = {"brick": 0.99, "gravel": 0.975, "grass": 0.94, "tile": 0.93}
    decision = decide(BEFORE, after, ["tile"])
    assert decision.passed, decision.reasons
    assert decision.reasons == []
    assert {c.task for c in decision.checks} == {"brick", "gravel", "grass", "tile"}
    assert [c.kind for c in decision.checks if c.task == "tile"] == ["new"]


def test_a_drop_of_exactly_the_margin_passes() -> None:
    # 0.95 - 0.93 is 0.020000000000000018 in floating point: must still pass.
    decision = decide({"grass": 0.95}, {"grass": 0.93}, [])
    assert decision.passed, decision.reasons


def test_refuses_when_an_earlier_task_drops_more_than_the_margin() -> None:
    after = {"brick": 0.99, "gravel": 0.94, "grass": 0.95}
    decision = decide(BEFORE, after, [])
    assert not decision.passed
    assert len(decision.reasons) == 1
    assert decision.reasons[0].startswith("gravel:")
    assert "0.9700 -> 0.9400" in decision.reasons[0]


def test_refuses_when_the_new_task_misses_its_floor() -> None:
    after = {**BEFORE, "tile": 0.85}
    decision = decide(BEFORE, after, ["tile"])
    assert not decision.passed
    assert decision.reasons == ["tile: new task image_auroc 0.8500 misses the floor 0.9000"]


def test_reports_every_reason_at_once() -> None:
    after = {"brick": 0.90, "gravel": 0.97, "grass": 0.80, "tile": 0.5}
    decision = decide(BEFORE, after, ["tile"], new_task_floor=0.9)
    assert not decision.passed
    assert [r.split(":")[0] for r in decision.reasons] == ["brick", "grass", "tile"]


@pytest.mark.parametrize("missing", [None, math.nan, "absent"])
def test_an_unmeasured_task_is_a_refusal(missing: object) -> None:
    after: dict[str, float | None] = {"brick": 0.99, "gravel": 0.97}
    if missing != "absent":
        after["grass"] = missing  # type: ignore[assignment]
    decision = decide(BEFORE, after, [])
    assert not decision.passed
    assert decision.reasons == ["grass: no image_auroc after the update"]
    new = decide({}, {"tile": missing if missing != "absent" else None}, ["tile"])  # type: ignore[dict-item]
    assert not new.passed


def test_per_task_margin_and_custom_settings() -> None:
    after = {"brick": 0.96, "gravel": 0.97, "grass": 0.95}
    assert not decide(BEFORE, after, []).passed
    decision = decide(BEFORE, after, [], max_drop_by_task={"brick": 0.05})
    assert decision.passed, decision.reasons
    strict = decide({"a": 0.9}, {"a": 0.895}, [], max_drop=0.0, metric="pixel_auroc")
    assert not strict.passed and "pixel_auroc" in strict.reasons[0]


def test_known_task_with_more_images_is_judged_as_earlier_and_improvements_pass() -> None:
    # A drop that only adds images to "brick": brick is not new, so it must not drop.
    decision = decide(BEFORE, {"brick": 1.0, "gravel": 0.99, "grass": 0.99}, [])
    assert decision.passed
    assert all(c.kind == "earlier" for c in decision.checks)


def test_decision_serialises_to_json() -> None:
    decision = decide(BEFORE, {**BEFORE, "gravel": 0.5}, [])
    doc = json.loads(json.dumps(decision.to_json()))
    assert doc["passed"] is False and doc["metric"] == "image_auroc"
    assert doc["reasons"] and len(doc["checks"]) == 3


scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


@given(
    st.dictionaries(st.sampled_from(["a", "b", "c", "d"]), st.tuples(scores, scores), min_size=1),
    scores,
    scores,
)
def test_gate_property(pairs: dict[str, tuple[float, float]], margin: float, floor: float) -> None:
    before = {t: b for t, (b, _a) in pairs.items()}
    after = {t: a for t, (_b, a) in pairs.items()}
    decision = decide(before, after, [], max_drop=margin, new_task_floor=floor)
    expected = all(before[t] - after[t] <= margin + 1e-9 for t in pairs)
    assert decision.passed == expected
    assert decision.passed == (not decision.reasons)


def test_read_eval_takes_the_last_matrix_row(tmp_path: Path) -> None:
    doc = {
        "tasks": ["a", "b", "c"],
        "matrix": {"image_auroc": [[0.9, None, None], [0.8, 0.7, None], [0.91, 0.92, None]]},
        "final": {"image_auroc": 0.9},
    }
    (tmp_path / "m.json").write_text(json.dumps(doc))
    assert read_eval(tmp_path / "m.json") == {"a": 0.91, "b": 0.92, "c": None}
    (tmp_path / "bad.json").write_text(json.dumps({"tasks": ["a"], "matrix": {}}))
    with pytest.raises(ValueError, match=r"matrix\.image_auroc"):
        read_eval(tmp_path / "bad.json")
