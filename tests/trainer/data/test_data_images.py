"""read_images / read_masks: colour order, channels, resizing, mask rules."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from linewatch.trainer.data import Sample, read_images, read_masks


def _write(path: Path, image: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), image)
    return path


def test_rgb_order_and_grayscale(tmp_path: Path) -> None:
    red_bgr = np.zeros((8, 8, 3), np.uint8)
    red_bgr[..., 2] = 255
    gray = np.full((8, 8), 77, np.uint8)
    deep = np.full((8, 8), 65535, np.uint16)
    paths = [
        _write(tmp_path / "red.png", red_bgr),
        _write(tmp_path / "gray.png", gray),
        _write(tmp_path / "deep.png", deep),
    ]
    images = read_images(paths, (8, 8))
    assert images.dtype == np.uint8 and images.shape == (3, 8, 8, 3)
    assert (images[0] == [255, 0, 0]).all()
    assert (images[1] == 77).all()
    assert (images[2] == 255).all(), "16-bit becomes 8-bit"


def test_resize_is_inter_area_to_hw(tmp_path: Path) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    path = _write(tmp_path / "a.png", rgb[..., ::-1].copy())
    out = read_images([str(path)], (20, 30))
    assert out.shape == (1, 20, 30, 3)
    assert np.array_equal(out[0], cv2.resize(rgb, (30, 20), interpolation=cv2.INTER_AREA))
    assert read_images([], (20, 30)).shape == (0, 20, 30, 3)


def test_read_masks_rules(tmp_path: Path) -> None:
    image = _write(tmp_path / "img.png", np.zeros((40, 40, 3), np.uint8))
    mask = np.zeros((40, 40), np.uint8)
    mask[:10, :20] = 255
    mask_path = _write(tmp_path / "img_mask.png", mask)
    samples = [
        Sample(image, 0, "good", None),
        Sample(image, 1, "scratch", mask_path),
        Sample(image, 1, "scratch", None),
    ]
    masks, has_mask = read_masks(samples, (20, 20))
    assert masks.dtype == bool and has_mask.dtype == bool
    assert has_mask.tolist() == [True, True, False]
    assert not masks[0].any() and not masks[2].any()
    expected = np.zeros((20, 20), bool)
    expected[:5, :10] = True
    assert np.array_equal(masks[1], expected), "nearest-neighbour resize keeps the mask binary and exact"
