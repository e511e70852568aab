"""DRAEM's Perlin anomalies: noise range and scale, binary rotated masks, blending only inside the mask."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data.sources import render_view
from trainer.data.synthetic_anomalies import (
    perlin_anomaly,
    perlin_mask,
    perlin_noise,
    random_texture,
    texture_source,
)


def test_perlin_noise_is_bounded_smooth_and_seeded() -> None:
    a = perlin_noise((64, 96), (4, 8), np.random.default_rng(0))
    b = perlin_noise((64, 96), (4, 8), np.random.default_rng(0))
    assert a.shape == (64, 96) and a.dtype == np.float32 and np.array_equal(a, b)
    assert np.abs(a).max() <= 1.0 + 1e-5 and a.std() > 0.05
    # Few cells -> smooth: neighbouring pixels differ much less than the value range.
    coarse = perlin_noise((128, 128), (2, 2), np.random.default_rng(1))
    fine = perlin_noise((128, 128), (32, 32), np.random.default_rng(1))
    assert np.abs(np.diff(coarse, axis=1)).mean() < np.abs(np.diff(fine, axis=1)).mean()
    # Shapes that `res` does not divide are allowed.
    assert perlin_noise((50, 37), (4, 8), np.random.default_rng(2)).shape == (50, 37)


def test_perlin_mask_is_binary_and_varies() -> None:
    rng = np.random.default_rng(3)
    masks = [perlin_mask((64, 64), rng) for _ in range(20)]
    for m in masks:
        assert m.shape == (64, 64) and m.dtype == np.float32
        assert set(np.unique(m)) <= {0.0, 1.0}
    covers = [m.mean() for m in masks]
    assert max(covers) > 0.02 and min(covers) < max(covers)  # some anomalies, of different sizes
    assert all(c < 0.6 for c in covers)  # thresholded at 0.5: never most of the image


def test_perlin_anomaly_changes_only_the_masked_area() -> None:
    rng = np.random.default_rng(4)
    image = render_view("brick", rng, (64, 64))
    texture = np.full((200, 300, 3), 255, np.uint8)  # any size; white, so the change is visible
    mask = np.zeros((64, 64), np.float32)
    mask[10:30, 20:50] = 1
    out, got = perlin_anomaly(image, texture, rng, beta_range=(0.1, 0.1), mask=mask)
    assert out.dtype == np.uint8 and out.shape == image.shape and np.array_equal(got, mask)
    inside = mask.astype(bool)
    assert np.array_equal(out[~inside], image[~inside])
    expected = np.rint(0.9 * 255 + 0.1 * image[inside].astype(np.float32))
    assert np.abs(out[inside].astype(np.float32) - expected).max() <= 1
    out2, m2 = perlin_anomaly(image, texture, np.random.default_rng(5))
    changed = np.any(out2 != image, axis=-1)
    assert not (changed & (m2 == 0)).any()


def test_texture_source_and_random_texture() -> None:
    textures = texture_source(exclude=["brick"])
    assert "brick" not in textures and len(textures) >= 5
    assert all(t.dtype == np.uint8 and t.ndim == 3 and t.shape[2] == 3 for t in textures.values())
    tex = random_texture(list(textures.values()), (48, 40), np.random.default_rng(6))
    assert tex.shape == (48, 40, 3) and tex.dtype == np.uint8
    with pytest.raises(ValueError):
        texture_source(exclude=[*textures, "brick"])
