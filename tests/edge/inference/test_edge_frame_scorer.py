"""Tile geometry on the edge: bundle key, whole-frame scoring, and a 2048x1536 stream over a real broker.

The toy graph scores |pixel - reference| per tile; with a flat grey reference, a flat grey camera frame
with a bright blob is anomalous exactly at the blob wherever the blob lands among the tiles, so region
coordinates in full-frame pixels can be checked exactly. (The PatchCore version of these checks, with
parity against the trainer, is tests/test_tiled_inspection.py, marked slow.)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from edge_testkit import edge_config, make_bundle, overlaps, wait_for

from linewatch.contract.geometry import Geometry
from linewatch.edge.config import BackendConfig
from linewatch.edge.inference.frame_scorer import FrameScorer
from linewatch.edge.inference.postprocess import find_regions
from linewatch.edge.model.bundle import BundleError, open_bundle
from linewatch.edge.publish import payloads
from linewatch.edge.runtime import EdgeRuntime

pytest.importorskip("onnxruntime", reason="the toy graph runs in onnxruntime")

TILE = (64, 64)
GREY = 128
SITE = "linewatch/site/line/station"


def tiled_bundle(out: Path, geometry: dict[str, Any] | None, max_batch: int, pad_rows: int = 0) -> Path:
    """The toy bundle with a flat grey reference and a `geometry` in its (unsigned) manifest.

    ``pad_rows``: letterbox padding (black) at the top and bottom of the reference.
    """
    reference = np.full((*TILE, 3), GREY, np.float32)
    if pad_rows:
        reference[:pad_rows] = 0
        reference[-pad_rows:] = 0
    make_bundle(out, hw=TILE, max_batch=max_batch, reference=reference)
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    if geometry is not None:
        manifest["geometry"] = geometry
    path.write_text(json.dumps(manifest, indent=2))
    return out


def blob_frame(hw: tuple[int, int], box: tuple[int, int, int, int] | None) -> np.ndarray:
    frame = np.full((*hw, 3), GREY, np.uint8)
    if box is not None:
        x, y, w, h = box
        frame[y : y + h, x : x + w] = (30, 240, 250)
    return frame


def test_bundle_without_geometry_resizes_as_before(tmp_path: Path) -> None:
    bundle = open_bundle(tiled_bundle(tmp_path / "b", None, 4))
    assert bundle.geometry["mode"] == "resize" and bundle.geometry["tile"] == list(TILE)


def test_bundle_geometry_is_checked(tmp_path: Path) -> None:
    ok = {"mode": "tile", "tile": list(TILE), "overlap": 16, "frame_size": [120, 160]}
    bundle = open_bundle(tiled_bundle(tmp_path / "ok", ok, 12))
    assert bundle.geometry == Geometry.from_dict(ok).as_dict()
    with pytest.raises(BundleError, match="max_batch"):  # 12 tiles per 120x160 frame, batch of 4
        open_bundle(tiled_bundle(tmp_path / "small", ok, 4))
    with pytest.raises(BundleError, match="input size"):
        open_bundle(tiled_bundle(tmp_path / "tile", {**ok, "tile": [32, 32]}, 64))
    with pytest.raises(BundleError, match="geometry"):
        open_bundle(tiled_bundle(tmp_path / "mode", {**ok, "mode": "mosaic"}, 12))


def _ort(bundle: Any) -> Any:
    from linewatch.edge.inference.backends.onnxruntime import OrtBackend

    return OrtBackend(bundle, "ort-cpu", BackendConfig())


@pytest.mark.parametrize(
    ("geometry", "hw", "tiles"),
    [
        ({"mode": "tile", "tile": list(TILE), "overlap": 16, "margin": 8}, (300, 400), 63),
        ({"mode": "tile", "tile": list(TILE), "scale": 0.5}, (300, 400), 12),
        ({"mode": "letterbox", "tile": list(TILE)}, (300, 400), 1),
    ],
)
def test_frame_scorer_reports_regions_in_full_frame_pixels(
    tmp_path: Path, geometry: dict, hw: tuple, tiles: int
) -> None:
    pad = Geometry.from_dict(geometry).plan(hw).offset[0] if geometry["mode"] == "letterbox" else 0
    bundle = open_bundle(tiled_bundle(tmp_path / "b", geometry, 64, pad))
    scorer = FrameScorer(bundle, _ort(bundle))
    box = (203, 111, 40, 30)  # straddles tile borders
    bad = scorer.score(blob_frame(hw, box))
    assert bad.anomaly_map.shape == hw and bad.tiles == tiles
    assert bad.score >= 0.5 and bad.score == pytest.approx(float(bad.anomaly_map.max()))
    regions = find_regions(bad.anomaly_map, hw, 0.5)
    assert len(regions) == 1 and overlaps(regions[0].bbox, box)
    x, y, w, h = regions[0].bbox
    assert abs(x - box[0]) <= 6 and abs(y - box[1]) <= 6 and abs(w - box[2]) <= 12 and abs(h - box[3]) <= 12
    good = scorer.score(blob_frame(hw, None))
    assert good.score < 0.5 and not find_regions(good.anomaly_map, hw, 0.5)
    buffer = scorer._buffer
    scorer.score(blob_frame(hw, None))
    assert scorer._buffer is buffer  # the tile buffer is reused from frame to frame


def test_frames_with_more_tiles_than_max_batch_run_in_chunks(tmp_path: Path) -> None:
    bundle = open_bundle(tiled_bundle(tmp_path / "b", {"mode": "tile", "tile": list(TILE)}, 4))
    out = FrameScorer(bundle, _ort(bundle)).score(blob_frame((192, 256), (100, 70, 20, 20)))
    assert out.tiles == 12 and out.score >= 0.5


def write_stream(path: Path, n: int, wh: tuple[int, int]) -> list[tuple[int, int, int, int] | None]:
    """An MJPG video of flat grey frames, every other one with a blob somewhere new."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 5, wh)
    assert writer.isOpened()
    truths: list[tuple[int, int, int, int] | None] = []
    for i in range(n):
        box = (137 + 411 * i, 95 + 233 * i, 24, 18) if i % 2 else None
        writer.write(blob_frame((wh[1], wh[0]), box))
        truths.append(box)
    writer.release()
    return truths


def test_2048x1536_stream_through_the_edge_over_a_real_broker(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    geometry = {"mode": "tile", "tile": list(TILE), "overlap": 16, "scale": 0.25, "frame_size": [1536, 2048]}
    tiles = Geometry.from_dict(geometry).tiles_per_frame()
    assert tiles == 88  # a 384x512 working frame, stride 48: 8 x 11
    bundle = tiled_bundle(tmp_path / "store" / "toy-v1", geometry, tiles)
    video = tmp_path / "line.avi"
    truths = write_stream(video, 4, (2048, 1536))
    cfg = edge_config(tmp_path, mqtt_broker.url, camera={"at_end": "stop"})
    rt = EdgeRuntime(cfg, bundle, [str(video)])
    rt.start()
    try:
        wait_for(rt.sources_finished, 120, what="the video to end")
        wait_for(lambda: len(results(rec)) >= 4, 120, what="4 verdicts")
    finally:
        rt.shutdown()
    docs = {d["frame_id"]: d for d in results(rec)}
    assert sorted(docs) == [0, 1, 2, 3]
    for _fid, doc in docs.items():
        payloads.validate(payloads.schema_for(doc), doc)
        assert doc["frame_size"] == {"width": 2048, "height": 1536}
        box = truths[doc["source"]["pos"]]
        assert doc["anomalous"] == (box is not None), doc
        if box is not None:
            assert len(doc["regions"]) == 1 and overlaps(doc["regions"][0]["bbox"], box), (
                doc["regions"],
                box,
            )
            x, y, _w, _h = doc["regions"][0]["bbox"]
            assert abs(x - box[0]) <= 12 and abs(y - box[1]) <= 12  # full-frame pixels, not model pixels
        else:
            assert doc["regions"] == []
    assert os.path.getsize(video) > 0


def results(rec: Any) -> list[dict[str, Any]]:
    return [r for r in rec.json("cam0/result") if r["schema"] == payloads.RESULT]
