"""Regions come back in the ORIGINAL frame's pixels; the overlay is a decodable JPEG."""

from __future__ import annotations

import cv2
import numpy as np

from linewatch.edge.inference.postprocess import find_regions, frame_jpeg, overlay_jpeg


def test_regions_scaled_to_frame() -> None:
    amap = np.zeros((64, 64), np.float32)
    amap[10:20, 30:40] = 0.8
    amap[15, 35] = 0.95
    amap[50:52, 5:7] = 0.6
    regions = find_regions(amap, (480, 640), 0.5)
    assert len(regions) == 2
    big, small = regions
    assert big.bbox == (300, 75, 100, 75)  # x*10, y*7.5
    assert big.area == round(100 * 10 * 7.5)
    assert abs(big.peak - 0.95) < 1e-6
    assert small.bbox == (50, 375, 20, 15) and small.area == 4 * 75
    assert big.as_dict() == {"bbox": [300, 75, 100, 75], "area": 7500, "peak": 0.95}


def test_threshold_and_min_area() -> None:
    amap = np.full((32, 32), 0.49, np.float32)
    assert find_regions(amap, (32, 32), 0.5) == []
    amap[0, 0] = 0.7
    assert len(find_regions(amap, (32, 32), 0.5)) == 1
    assert find_regions(amap, (32, 32), 0.5, min_area=2) == []


def test_bbox_stays_inside_frame() -> None:
    amap = np.zeros((7, 7), np.float32)
    amap[4:, 4:] = 1.0
    (region,) = find_regions(amap, (100, 100), 0.5)
    x, y, w, h = region.bbox
    assert x + w <= 100 and y + h <= 100 and w > 0 and h > 0


def test_overlay_and_snapshot_jpeg_decode() -> None:
    frame = np.full((120, 160, 3), 128, np.uint8)
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 20:40] = 1.0
    for data in (overlay_jpeg(frame, amap), frame_jpeg(frame)):
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert img.shape == (120, 160, 3)
