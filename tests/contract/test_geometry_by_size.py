"""``by_size``: one model, a geometry per camera (frame size), chosen per task by ``auto``."""

from __future__ import annotations

import numpy as np
import pytest

from linewatch.contract.geometry import Geometry, resize_frame

WIDE, TALL = (460, 1130), (1260, 500)
DOC = {
    "mode": "tile",
    "tile": [64, 64],
    "overlap": 8,
    "margin": 4,
    "by_size": [
        {"match": list(WIDE), "mode": "resize", "tile": [64, 64], "tasks": ["ball_screw"], "reason": "r1"},
        {"match": list(TALL), "mode": "tile", "tile": [64, 64], "overlap": 8, "scale": 0.25},
    ],
}


def test_round_trip_and_framed() -> None:
    g = Geometry.from_dict(DOC)
    assert Geometry.from_dict(g.as_dict()) == g
    assert [hw for hw, _ in g.by_size] == [WIDE, TALL]
    first = g.as_dict()["by_size"][0]  # the manifest keeps which tasks chose it, and why
    assert first["tasks"] == ["ball_screw"] and first["reason"] == "r1" and first["match"] == list(WIDE)
    assert g.framed  # a tiled entry: frames are cut through plans
    only_resize = Geometry.from_dict({"mode": "resize", "tile": [64, 64], "by_size": DOC["by_size"][:1]})
    assert not only_resize.framed  # all resize: model-size inputs, the unframed fast path


def test_frames_pick_the_nearest_size_within_tolerance() -> None:
    g = Geometry.from_dict(DOC)
    assert g.for_frame(WIDE).mode == "resize"
    assert g.for_frame((1253, 500)).scale == 0.25  # the same camera, a few px shorter
    assert g.for_frame((1500, 500)) is g  # 19 % taller: another camera, the model-wide geometry
    assert g.for_frame((300, 300)) is g
    assert g.plan(WIDE).n == 1 and g.tiles_per_frame(WIDE) == 1
    assert g.plan((1257, 500)).geometry.scale == 0.25 and g.tiles_per_frame((1257, 500)) > 1


def test_a_resize_entry_cuts_and_stitches_as_plain_resize() -> None:
    frame = np.random.default_rng(3).integers(0, 256, (*WIDE, 3), dtype=np.uint8)
    plan = Geometry.from_dict(DOC).plan(WIDE)
    np.testing.assert_array_equal(plan.cut(frame)[0], resize_frame(frame, (64, 64)))
    small = np.random.default_rng(4).random((1, 64, 64)).astype(np.float32)
    assert plan.stitch(small, frame_size=False).shape == (64, 64)  # the edge keeps model resolution
    assert plan.stitch(small).shape == WIDE  # metrics get the frame's


def test_entries_must_share_the_model_input() -> None:
    bad = {**DOC, "by_size": [{"match": list(WIDE), "mode": "resize", "tile": [32, 32]}]}
    with pytest.raises(ValueError, match="by_size entry"):
        Geometry.from_dict(bad)
