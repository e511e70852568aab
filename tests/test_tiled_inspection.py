"""Small defects in large frames, end to end: tiled PatchCore vs the 256x256 resize model, export, edge.

One generated dataset of 1024x768 frames with 3-15 px defects. Two PatchCore models learn it:
``resize`` (the frame squeezed to 256x256) and ``tile`` (256x256 tiles at native pixels, 64 px
overlap, 32 px mirrored margin). Then:

1. the tiled model finds the defects the resize model misses (image AUROC side by side, metrics on
   full-resolution masks and stitched full-frame maps);
2. the tiled run exports a bundle whose manifest carries the geometry and a max_batch that holds a
   frame's tiles; the edge (onnxruntime, edge/inference/frame_scorer.py) gives the trainer's stitched map and score on
   the same frame, and its regions, in full-frame pixels, land on the true defects;
3. a 2048x1536 video of the same part runs through the edge with a real mosquitto broker.

Slow: about 3-4 minutes on 2 loaded CPU cores, most of it the tiled fit. PyTorch runs on one thread
here: on a shared 2-core machine that is several times faster than two.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from polling import wait_for

pytest.importorskip("torch", reason="the trainer and the exporter need torch")
pytest.importorskip("onnxruntime", reason="the edge runs the graph in onnxruntime")

pytestmark = pytest.mark.slow

TASK = "moon"
FRAME_WH = (1024, 768)
DEFECT_SCALE = 0.09  # 7-13 px defects on a 768 px side (see test_data_small_defects.py)
DEFECT_TYPES = ["hole", "foreign_patch", "missing_corner"]
TILE = {"mode": "tile", "overlap": 64, "margin": 32}
BUDGET = 2000


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread() -> Iterator[None]:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def large_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linewatch.trainer.data.generate import generate_dataset

    root = tmp_path_factory.mktemp("large")
    generate_dataset(
        root, [TASK], n_train=14, n_test_good=6, n_test_defect=9, size=FRAME_WH, seed=5,
        defect_scale=DEFECT_SCALE, defect_types=DEFECT_TYPES,
    )  # fmt: skip
    return root


def _fit(data: Path, out: Path, geometry: dict[str, Any]) -> dict[str, Any]:
    from linewatch.trainer.config import TrainConfig
    from linewatch.trainer.continual import fit

    cfg = TrainConfig(
        method="patchcore", image_size=(256, 256), progress=False, report=False, min_val=2,
        patchcore={"budget": BUDGET}, geometry=geometry,
    )  # fmt: skip
    return fit(cfg, f"mvtec:{data}", [TASK], out, log=lambda _m: None)


@pytest.fixture(scope="module")
def runs(large_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    base = tmp_path_factory.mktemp("runs")
    return {
        mode: (base / mode, _fit(large_data, base / mode, geometry))
        for mode, geometry in (("resize", {"mode": "resize"}), ("tile", TILE))
    }


@pytest.fixture(scope="module")
def bundle(runs: dict, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from linewatch.export.bundle_writer import write_bundle
    from linewatch.export.run_source import load_run_for_export

    run = load_run_for_export(runs["tile"][0])
    out = tmp_path_factory.mktemp("store") / "patchcore-v1"
    written = write_bundle(run.graph, out, info=run.info, golden_inputs=run.golden_inputs, max_batch=8)
    return written.path


def test_generated_defects_are_3_to_15_px(large_data: Path) -> None:
    from linewatch.trainer.data import imread_mask, load_task
    from linewatch.trainer.data.synth import bbox_of

    split = load_task(f"mvtec:{large_data}", TASK)
    masks = [imread_mask(s.mask_path) for s in split.test if s.label == 1]
    assert masks and all(m.shape == (FRAME_WH[1], FRAME_WH[0]) for m in masks)
    for m in masks:
        x0, y0, x1, y1 = bbox_of(m)
        assert 3 <= max(x1 - x0, y1 - y0) <= 15, (x1 - x0, y1 - y0)


def test_tiled_model_finds_the_small_defects_the_resize_model_misses(runs: dict) -> None:
    resize, tile = runs["resize"][1], runs["tile"][1]
    auroc = {"resize": resize["final"]["image_auroc"], "tile": tile["final"]["image_auroc"]}
    print(f"\nimage AUROC on {FRAME_WH[0]}x{FRAME_WH[1]} frames: {auroc}")
    print(f"pixel AUROC: resize {resize['final']['pixel_auroc']:.3f} tile {tile['final']['pixel_auroc']:.3f}")
    assert auroc["tile"] >= 0.9
    assert auroc["tile"] - auroc["resize"] >= 0.2
    # full-resolution masks judge the stitched full-frame maps: the tiles localise, the resize model cannot
    assert tile["final"]["pixel_auroc"] >= 0.95 > resize["final"]["pixel_auroc"]
    assert tile["final"]["aupro"] > resize["final"]["aupro"] + 0.3
    # the geometry is part of the run's saved config, frame size learnt from the data
    saved = json.loads((runs["tile"][0] / "state" / "run.json").read_text())["config"]["geometry"]
    expected = {**TILE, "scale": 1.0, "frame_size": [FRAME_WH[1], FRAME_WH[0]]}
    assert {k: saved[k] for k in expected} == expected
    assert saved["learn_frame_size"] is True and saved["reason"] is None  # an explicit tile, not auto


def _hits(region: Any, truth: Any) -> bool:
    """A region's (x, y, w, h) box overlaps a true defect's (x0, y0, x1, y1) corners."""
    x, y, w, h = region
    x0, y0, x1, y1 = truth
    return x < x1 and x0 < x + w and y < y1 and y0 < y + h


def _test_frames(large_data: Path) -> tuple[np.ndarray, np.ndarray, list[Any]]:
    from linewatch.trainer.data import load_task, read_images, read_masks

    split = load_task(f"mvtec:{large_data}", TASK)
    hw = (FRAME_WH[1], FRAME_WH[0])
    frames = read_images([s.path for s in split.test], hw)
    masks, _ = read_masks(split.test, hw)
    return frames, masks, split.test


def test_edge_honours_the_bundle_geometry_and_matches_the_trainer(
    runs: dict, bundle: Path, large_data: Path
) -> None:
    import cv2

    from linewatch.contract.geometry import Geometry
    from linewatch.edge.config import BackendConfig
    from linewatch.edge.inference.backends.onnxruntime import OrtBackend
    from linewatch.edge.inference.frame_scorer import FrameScorer
    from linewatch.edge.inference.postprocess import find_regions
    from linewatch.edge.model.bundle import open_bundle
    from linewatch.trainer.data.synth import bbox_of
    from linewatch.trainer.runs import load_run

    b = open_bundle(bundle)
    learner, _ = load_run(runs["tile"][0])
    geometry = learner.cfg.geometry_manifest()
    assert b.manifest["geometry"] == geometry and b.geometry == geometry
    tiles = Geometry.from_dict(geometry).tiles_per_frame()
    assert tiles == 24 and b.max_batch == tiles  # asked for 8: the exporter raised it to a frame's tiles

    frames, masks, samples = _test_frames(large_data)
    hw = frames.shape[1:3]
    scorer = FrameScorer(b, OrtBackend(b, "ort-cpu", BackendConfig()))
    edge = [scorer.score(cv2.cvtColor(f, cv2.COLOR_RGB2BGR)) for f in frames]  # the camera's BGR
    assert all(e.anomaly_map.shape == hw and e.tiles == tiles for e in edge)

    # regions, in full-frame pixels, land on the true defects
    flagged = 0
    for e, mask, sample in zip(edge, masks, samples, strict=True):
        if sample.label == 0 or e.score < 0.5:
            continue
        flagged += 1
        top = max(find_regions(e.anomaly_map, hw, 0.5), key=lambda r: r.peak)
        assert _hits(top.bbox, bbox_of(mask)), (top, bbox_of(mask), sample.path)
    assert flagged >= sum(s.label for s in samples) // 2

    # the edge's stitched map and score equal the trainer's on the same frames
    picks = [i for i, s in enumerate(samples) if s.label == 1][:2] + [
        i for i, s in enumerate(samples) if s.label == 0
    ][:1]
    pred = learner.predict(TASK, frames[picks])
    for k, i in enumerate(picks):
        assert abs(edge[i].score - float(pred.scores[k])) <= 1e-3
        assert float(np.abs(edge[i].anomaly_map - pred.maps[k]).max()) <= 1e-2
        assert edge[i].task == int(pred.task[k])


def test_a_2048x1536_stream_runs_through_the_edge_with_a_real_broker(
    bundle: Path, mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    from linewatch.edge.config import load_config
    from linewatch.edge.publish import payloads
    from linewatch.edge.runtime import EdgeRuntime
    from linewatch.trainer.data.generate import generate_video

    video = tmp_path / "line.avi"
    # Frames are brought to the bundle's frame size (1024x768) and tiled; maps and regions come back in
    # the camera's 2048x1536 pixels. Broken corners are found whatever the compression and resizing.
    truths = generate_video(
        video, TASK, n_frames=4, defect_every=2, size=(2048, 1536), seed=9,
        defect_types=["missing_corner"], defect_scale=DEFECT_SCALE,
    )  # fmt: skip
    rec = mqtt_recorder(["linewatch/#"])
    cfg = load_config(
        None,
        {
            "mqtt": {"url": mqtt_broker.url, "reconnect_min_s": 0.05, "reconnect_max_s": 0.5},
            "outbox": {"path": str(tmp_path / "outbox.sqlite"), "drain_timeout_s": 30},
            "camera": {"at_end": "stop"},
            "publish": {"mode": "every_frame"},
        },
    )
    rt = EdgeRuntime(cfg, bundle, [str(video)])
    rt.start()

    def results() -> list[dict]:
        return [r for r in rec.json("cam0/result") if r["schema"] == payloads.RESULT]

    try:
        wait_for(lambda: len({r["frame_id"] for r in results()}) >= 4, 300, what="4 verdicts")
    finally:
        rt.shutdown()
    docs = {r["frame_id"]: r for r in results()}
    assert sorted(docs) == [0, 1, 2, 3]
    for doc in docs.values():
        payloads.validate(payloads.schema_for(doc), doc)
        assert doc["frame_size"] == {"width": 2048, "height": 1536}
        for r in doc["regions"]:
            x, y, w, h = r["bbox"]
            assert x >= 0 and y >= 0 and x + w <= 2048 and y + h <= 1536
        truth = truths[doc["source"]["pos"]]
        assert doc["anomalous"] == truth.defective, (doc["score"], truth)
        if truth.defective:
            top = max(doc["regions"], key=lambda r: r["peak"])
            assert _hits(top["bbox"], truth.bbox), (doc["regions"], truth.bbox)
