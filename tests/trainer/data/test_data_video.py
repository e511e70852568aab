"""Synthetic line videos: frame count, known defect frames, truth JSON."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from linewatch.trainer.data.generate import (
    generate_video,
    main,
    read_truth_json,
    read_video,
    render_frame,
    write_truth_json,
)


def test_video_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "line.avi"
    truths = generate_video(path, "gravel", n_frames=12, defect_every=4, size=(96, 64), fps=10, seed=1)
    frames = read_video(path)
    assert frames.shape == (12, 64, 96, 3)
    assert [t.index for t in truths if t.defective] == [3, 7, 11]
    assert [t.defect_type for t in truths if t.defective] == ["scratch", "crack", "hole"]
    for truth in truths:
        clean, _ = render_frame("gravel", truth.index, (96, 64), seed=1)
        delta = np.abs(frames[truth.index].astype(int) - clean).max(axis=-1)
        if truth.defective:
            assert truth.mask is not None and truth.mask.shape == (64, 96)
            x0, y0, x1, y1 = truth.bbox
            ys, xs = np.nonzero(truth.mask)
            assert (x0, y0, x1, y1) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert delta[truth.mask].mean() > 3 * delta[~truth.mask].mean() + 10, "defect survives encoding"
        else:
            assert truth.mask is None and truth.bbox is None
            assert delta.mean() < 12, "good frames are the clean parts, up to MJPG loss"
    assert np.abs(frames[0].astype(int) - frames[1]).mean() > 10, "each frame is a different part"


def test_video_truth_is_deterministic_and_serialisable(tmp_path: Path) -> None:
    a = generate_video(tmp_path / "a.avi", "brick", n_frames=6, defect_every=3, size=64, seed=0)
    b = generate_video(tmp_path / "b.avi", "brick", n_frames=6, defect_every=3, size=64, seed=0)
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, b, strict=True) if x.defective)
    json_path = write_truth_json(
        tmp_path / "truth.json", a, video=tmp_path / "a.avi", mask_dir=tmp_path / "masks"
    )
    back = read_truth_json(json_path)
    assert [(t.index, t.defective, t.bbox, t.defect_type) for t in back] == [
        (t.index, t.defective, t.bbox, t.defect_type) for t in a
    ]
    assert all(np.array_equal(x.mask, y.mask) for x, y in zip(a, back, strict=True) if x.defective)


def test_no_defects_and_cli(tmp_path: Path) -> None:
    truths = generate_video(tmp_path / "clean.avi", "moon", n_frames=3, defect_every=0, size=32)
    assert not any(t.defective for t in truths)
    video = tmp_path / "cli.avi"
    assert (
        main(
            [
                "--video",
                str(video),
                "--tasks",
                "grass",
                "--frames",
                "5",
                "--defect-every",
                "2",
                "--size",
                "48",
            ]
        )
        == 0
    )
    assert read_video(video).shape == (5, 48, 48, 3)
    assert sum(t.defective for t in read_truth_json(video.with_suffix(".json"))) == 2
