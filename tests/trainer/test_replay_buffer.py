"""The replay buffer: fixed size, balanced across tasks, compressed, honest about bytes, no pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from linewatch.trainer.replay_buffer import ReplayBuffer, balanced_quotas


def _images(n: int, seed: int, hw: int = 32) -> np.ndarray:
    """Smooth images with a little noise: compressible like photographs, different per seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:hw, 0:hw]
    base = np.stack([x * 4 + seed * 20, y * 4, (x + y) * 2], axis=-1).astype(np.float32)
    out = [np.clip(base + rng.normal(0, 3, base.shape) + i, 0, 255).astype(np.uint8) for i in range(n)]
    return np.stack(out)


@given(st.integers(0, 500), st.lists(st.integers(0, 400), min_size=1, max_size=8))
def test_quotas_fill_capacity_fairly(capacity: int, available: list[int]) -> None:
    q = balanced_quotas(capacity, available)
    assert all(0 <= qi <= a for qi, a in zip(q, available, strict=True))
    assert sum(q) == min(capacity, sum(available))
    # water-filling: a task below its cap is never more than one image short of any other task
    for i, qi in enumerate(q):
        if qi < available[i]:
            assert all(qj <= qi + 1 for qj in q)


def test_older_shares_shrink_as_tasks_arrive() -> None:
    buf = ReplayBuffer(capacity=30)
    rng = np.random.default_rng(0)
    buf.add_task("a", _images(40, 1), rng)
    assert buf.counts() == {"a": 30}
    buf.add_task("b", _images(40, 2), rng)
    assert buf.counts() == {"a": 15, "b": 15}
    buf.add_task("c", _images(5, 3), rng)  # a small task leaves its unused share to the others
    assert buf.counts() == {"a": 12, "b": 13, "c": 5} and len(buf) == 30
    buf.add_task("b", _images(40, 4), rng)  # re-learning a known task replaces its share
    assert buf.counts() == {"a": 12, "b": 13, "c": 5}
    assert buf.tasks == ["a", "b", "c"]


def test_png_is_lossless_and_bytes_are_reported_honestly() -> None:
    images = _images(10, 5)
    buf = ReplayBuffer(capacity=10, fmt="png")
    buf.add_task("a", images, np.random.default_rng(0))
    stored = buf.images("a")
    assert {a.tobytes() for a in stored} == {a.tobytes() for a in images}
    stats = buf.stats()
    assert stats["bytes"] == sum(len(b) for b in buf.entries[0])
    assert stats["raw_bytes"] == images.nbytes and stats["images"] == 10
    assert stats["per_task"] == {"a": 10} and stats["format"] == "png"
    jpeg = ReplayBuffer(capacity=10, fmt="jpeg", quality=90)
    jpeg.add_task("a", images, np.random.default_rng(0))
    assert jpeg.stats()["bytes"] < stats["bytes"]
    assert np.abs(jpeg.images("a").astype(int).mean() - images.astype(int).mean()) < 3


def test_sampling_is_balanced_and_skips_the_current_task() -> None:
    buf = ReplayBuffer(capacity=100)
    rng = np.random.default_rng(0)
    buf.add_task("big", _images(90, 1), rng)
    buf.add_task("small", _images(4, 9), rng)
    assert buf.counts() == {"big": 90, "small": 4}
    assert buf.sample(8, rng, exclude="big").shape == (8, 32, 32, 3)
    small = {a.tobytes() for a in buf.images("small")}
    draws = buf.sample(400, rng)
    from_small = sum(d.tobytes() in small for d in draws)
    assert 150 < from_small < 250  # tasks drawn uniformly, not by how many images they keep
    assert buf.sample(4, rng, exclude=None) is not None
    only = ReplayBuffer(capacity=10)
    only.add_task("a", _images(3, 1), rng)
    assert only.sample(4, rng, exclude="a") is None


def test_state_round_trips_through_safetensors(tmp_path: Path) -> None:
    buf = ReplayBuffer(capacity=12, fmt="png")
    rng = np.random.default_rng(3)
    for i, t in enumerate(("a", "b", "c")):
        buf.add_task(t, _images(8, i), rng)
    tensors, meta = buf.state()
    save_file(tensors, str(tmp_path / "s.safetensors"))
    back = ReplayBuffer.from_state(load_file(str(tmp_path / "s.safetensors")), meta)
    assert back.entries == buf.entries and back.tasks == buf.tasks and back.stats() == buf.stats()
    assert tensors["replay.data"].dtype.is_floating_point is False
    empty_t, empty_m = ReplayBuffer(5).state()
    save_file(empty_t, str(tmp_path / "e.safetensors"))
    assert len(ReplayBuffer.from_state(load_file(str(tmp_path / "e.safetensors")), empty_m)) == 0


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="format"):
        ReplayBuffer(5, fmt="gif")
    buf = ReplayBuffer(5)
    with pytest.raises(ValueError, match="uint8"):
        buf.add_task("a", np.zeros((2, 8, 8, 3), np.float32), np.random.default_rng(0))
    buf.add_task("a", np.zeros((2, 8, 8, 3), np.uint8), np.random.default_rng(0))
    with pytest.raises(ValueError, match="replay images are"):
        buf.add_task("b", np.zeros((2, 9, 8, 3), np.uint8), np.random.default_rng(0))
