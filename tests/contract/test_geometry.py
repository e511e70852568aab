"""Input geometry (contract/geometry.py, the one implementation trainer and edge share) and the `geometry` config section."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from linewatch.contract.geometry import (
    Geometry,
    combine_tasks,
    resize_frame,
    tile_boxes,
    tile_starts,
    tile_window,
)
from linewatch.trainer.config import ConfigError, TrainConfig, load_config

ROOT = Path(__file__).resolve().parents[2]
GEOMETRIES = [
    {"mode": "tile", "tile": [64, 64]},
    {"mode": "tile", "tile": [64, 64], "overlap": 16},
    {"mode": "tile", "tile": [64, 48], "overlap": 20, "margin": 10},
    {"mode": "tile", "tile": [64, 64], "overlap": 8, "scale": 0.5},
    {"mode": "tile", "tile": [64, 64], "scale": 0.5, "frame_size": [240, 300]},
    {"mode": "letterbox", "tile": [64, 64]},
    {"mode": "resize", "tile": [64, 64]},
]


def test_trainer_and_edge_use_the_one_geometry_module() -> None:
    # One implementation, so the edge cuts and stitches exactly as training did: no copies to drift.
    import linewatch.edge.inference.frame_scorer
    import linewatch.trainer.learner
    import linewatch.trainer.methods.common

    assert (
        linewatch.edge.inference.frame_scorer.Geometry
        is linewatch.trainer.learner.Geometry
        is linewatch.trainer.methods.common.Geometry
        is Geometry
    )
    assert not (ROOT / "trainer/geometry.py").exists() and not (ROOT / "edge/geometry.py").exists()


@pytest.mark.parametrize(
    ("size", "tile", "overlap"),
    [(256, 256, 0), (768, 256, 0), (1000, 256, 0), (1024, 256, 64), (1536, 256, 32), (300, 64, 63)],
)
def test_tile_starts_cover_the_side_and_align_the_last_tile_to_the_border(
    size: int, tile: int, overlap: int
) -> None:
    starts = tile_starts(size, tile, overlap)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s : s + tile] = True
    assert covered.all() and starts[0] == 0 and starts[-1] == size - tile
    steps = np.diff(starts)
    assert np.all(steps[:-1] == tile - overlap) and np.all(steps > 0) and np.all(steps <= tile - overlap)


def test_tile_boxes_row_major_within_the_frame() -> None:
    boxes = tile_boxes((768, 1024), (256, 256))
    assert len(boxes) == 12
    assert boxes[0].tolist() == [0, 0, 256, 256] and boxes[3].tolist() == [0, 768, 256, 1024]
    assert boxes[-1].tolist() == [512, 768, 768, 1024]
    assert Geometry("tile", (256, 256)).tiles_per_frame((1536, 2048)) == 48
    assert Geometry("tile", (256, 256), scale=0.5).tiles_per_frame((1536, 2048)) == 12
    assert Geometry("tile", (256, 256), frame_hw=(768, 1024)).tiles_per_frame() == 12
    assert Geometry("tile", (256, 256)).tiles_per_frame() is None
    assert Geometry("letterbox", (256, 256)).tiles_per_frame((1536, 2048)) == 1


def test_bad_geometries_are_refused() -> None:
    with pytest.raises(ValueError, match="smaller than"):
        tile_starts(100, 128)
    with pytest.raises(ValueError, match="overlap"):
        Geometry("tile", (64, 64), overlap=64)
    with pytest.raises(ValueError, match="mode"):
        Geometry("mosaic")
    # a frame that the scale would make smaller than a tile is cut at the least scale that fits
    # (the same in training and on the box) instead of leaving the line uninspected
    plan = Geometry("tile", (256, 256), scale=0.1).plan((1536, 2048))
    assert plan.work_hw == (256, 341) and plan.n == 2 and plan.scale == pytest.approx(256 / 1536)
    assert Geometry("tile", (256, 256), overlap=32, margin=16).plan((200, 640)).work_hw[0] == 224


def test_cut_writes_into_the_given_buffer_in_one_go() -> None:
    frame = np.random.default_rng(1).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    plan = Geometry("tile", (64, 64), overlap=16).plan((200, 300))
    buf = np.empty((plan.n, 64, 64, 3), np.uint8)
    out = plan.cut(frame, buf)
    assert out is buf
    for tile, (y0, x0, y1, x1) in zip(out, plan.boxes, strict=True):
        np.testing.assert_array_equal(tile, frame[y0:y1, x0:x1])
    rgb = plan.cut(frame, buf, bgr=True)
    np.testing.assert_array_equal(rgb[-1], frame[plan.boxes[-1][0] :, plan.boxes[-1][1] :, ::-1])
    with pytest.raises(ValueError):
        plan.cut(frame[:100])


@pytest.mark.parametrize("doc", [g for g in GEOMETRIES if g["mode"] == "tile" and "scale" not in g])
def test_stitching_the_cut_of_an_image_gives_it_back(doc: dict) -> None:
    g = Geometry.from_dict(doc)
    img = np.random.default_rng(2).random((150, 200), dtype=np.float32)
    plan = g.plan(img.shape)
    m = plan.margin
    padded = cv2.copyMakeBorder(img, m, m, m, m, cv2.BORDER_REFLECT_101) if m else img
    tiles = np.stack([padded[y0:y1, x0:x1] for y0, x0, y1, x1 in plan.boxes])
    np.testing.assert_allclose(plan.stitch(tiles), img, atol=1e-5)


def test_overlaps_are_averaged_and_single_cover_pixels_keep_their_tile_value() -> None:
    plan = Geometry("tile", (64, 64), overlap=32).plan((64, 96))  # two tiles: x 0-64 and 32-96
    assert plan.boxes[:, 1].tolist() == [0, 32]
    out = plan.stitch(np.stack([np.full((64, 64), 0.2, np.float32), np.full((64, 64), 0.8, np.float32)]))
    assert np.allclose(out[:, :32], 0.2) and np.allclose(out[:, 64:], 0.8)
    band = out[0, 32:64]
    assert np.all(np.diff(band) >= -1e-6) and band.min() >= 0.2 and band.max() <= 0.8  # a cross-fade
    assert abs(float(band.mean()) - 0.5) < 0.02
    w = tile_window((64, 64), 32)
    assert w[32, 32] == 1.0 and w[32, 0] < 0.01 and np.allclose(tile_window((8, 8), 0), 1.0)
    # plain averaging where a last tile overlaps without a configured overlap
    plan = Geometry("tile", (64, 64)).plan((64, 100))
    out = plan.stitch(np.stack([np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)]))
    assert np.allclose(out[:, 36:64], 0.5) and np.allclose(out[:, :36], 0) and np.allclose(out[:, 64:], 1)


def test_scaled_tiles_come_back_at_frame_resolution() -> None:
    g = Geometry("tile", (64, 64), scale=0.5, frame_hw=(256, 384))
    frame = np.zeros((512, 768, 3), np.uint8)  # a bigger camera: brought to frame_hw * scale first
    plan = g.plan(frame.shape[:2])
    assert plan.work_hw == (128, 192) and plan.n == 6
    assert plan.cut(frame).shape == (6, 64, 64, 3)
    assert plan.stitch(np.zeros((6, 64, 64), np.float32)).shape == (512, 768)


def test_letterbox_keeps_the_aspect_and_crops_the_map_back() -> None:
    g = Geometry("letterbox", (64, 64))
    plan = g.plan((150, 200))
    assert plan.work_hw == (48, 64) and plan.offset == (8, 0)
    frame = np.full((150, 200, 3), 200, np.uint8)
    tile = plan.cut(frame)[0]
    assert tile[:8].max() == 0 and tile[-8:].max() == 0 and tile[8:56].min() == 200
    m = np.zeros((1, 64, 64), np.float32)
    m[0, 8:56] = 1.0
    np.testing.assert_allclose(plan.stitch(m), 1.0)


def test_cut_many_and_task_vote() -> None:
    frames = np.random.default_rng(3).integers(0, 256, (3, 128, 192, 3), dtype=np.uint8)
    tiles = Geometry("tile", (64, 64)).cut_many(frames)
    assert tiles.shape == (18, 64, 64, 3)
    np.testing.assert_array_equal(tiles[6], frames[1, :64, :64])
    assert combine_tasks(np.array([2, 1, 1, 2, 1])) == 1 and combine_tasks(np.array([0, 3, 3])) == 3


def test_from_dict_defaults_to_resize_and_round_trips() -> None:
    assert Geometry.from_dict(None, (256, 256)).mode == "resize"
    assert Geometry.from_dict({}, (128, 96)).tile_hw == (128, 96)
    g = Geometry("tile", (256, 256), 64, 0.5, (1536, 2048), 32)
    assert Geometry.from_dict(g.as_dict()) == g


def test_config_geometry_section(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = TrainConfig()
    assert cfg.geometry.mode == "auto"  # resolved from the data by the first fit
    cfg = load_config(None, geometry={"mode": "resize"})
    assert cfg.geometry_manifest() == {
        "mode": "resize", "tile": [256, 256], "overlap": 0, "scale": 1.0, "frame_size": None, "margin": 0
    }  # fmt: skip
    monkeypatch.setenv("LINEWATCH_TRAIN_GEOMETRY__MODE", "tile")
    monkeypatch.setenv("LINEWATCH_TRAIN_GEOMETRY__OVERLAP", "64")
    cfg = load_config()
    assert cfg.geometry.mode == "tile" and cfg.geometry.overlap == 64
    with pytest.raises(ConfigError, match="overlap"):
        load_config(None, geometry={"mode": "tile", "overlap": 256})
    with pytest.raises(ConfigError, match="does not fit"):
        load_config(None, geometry={"mode": "tile", "frame_size": (300, 400), "scale": 0.5})
    with pytest.raises(ConfigError, match="geometry"):
        load_config(None, geometry={"mode": "mosaic"})


def test_context_view_is_the_last_input_and_half_of_the_map() -> None:
    """``context`` adds the whole frame resized as one more input; the map averages it with the tiles'."""
    frame = np.random.default_rng(5).integers(0, 256, (128, 192, 3), dtype=np.uint8)
    plain = Geometry("tile", (64, 64)).plan(frame.shape[:2])
    g = Geometry("tile", (64, 64), context=True)
    assert Geometry.from_dict(g.as_dict()) == g and g.as_dict()["context"] is True
    plan = g.plan(frame.shape[:2])
    assert plan.n == plain.n + 1 == g.tiles_per_frame(frame.shape[:2])
    cut = plan.cut(frame)
    np.testing.assert_array_equal(cut[:-1], plain.cut(frame))
    np.testing.assert_array_equal(cut[-1], resize_frame(frame, (64, 64)))
    tile_maps = np.random.default_rng(6).random((plain.n, 64, 64)).astype(np.float32)
    context_map = np.full((1, 64, 64), 2.0, np.float32)
    full = plan.stitch(np.concatenate([tile_maps, context_map]))
    np.testing.assert_allclose(full, 0.5 * (plain.stitch(tile_maps) + 2.0), rtol=1e-6)
    with pytest.raises(ValueError, match="tile-mode"):
        Geometry("resize", (64, 64), context=True)
