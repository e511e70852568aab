"""Every replay-trained method from training to the line: replay run -> `linewatch-export` (signed) -> edge -> MQTT.

The methods are the registry's (every registered method with a `replay` strategy: EfficientAD,
STFPM, CFA, Reverse Distillation, ...), so a new one is served here with nothing to edit.

Against a real mosquitto: the edge verifies the signature and the golden samples, scores
frames dropped into a watched folder, and publishes one verdict per frame. Each verdict's
score equals the bundle's ONNX graph on that frame (the frames are lossless PNGs at model
size, so the edge sees exactly the pixels onnxruntime sees here), and every payload
matches the shipped JSON Schemas.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from edge_testkit import edge_config, overlaps, wait_for
from trained_methods_kit import HW, TASKS, get_kit, replay_trained_methods

from linewatch.edge.publish import payloads

pytestmark = pytest.mark.slow
SITE = "linewatch/site/line/station"
pytest.importorskip("torch", reason="the trained methods are listed from the trainer's registry")
METHODS = replay_trained_methods()  # every registered method with a replay strategy
PER_TASK = 3  # good and defect frames per task


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory):
    return get_kit(tmp_path_factory)


def _frames(kit) -> dict[str, tuple[np.ndarray, int, tuple[int, int, int, int] | None]]:
    """File name -> (RGB frame at model size, label, painted box x, y, w, h or None).

    Per task: good and defect test images, plus good images with a gross painted defect. The
    synthetic test defects are small at 64 px and one shared threshold serves all tasks, so
    they may stay under 0.5; the painted ones make sure the anomalous path (regions, heatmap)
    is exercised too.
    """
    from linewatch.trainer.data import load_task, read_images

    out: dict[str, tuple[np.ndarray, int, tuple[int, int, int, int] | None]] = {}
    for task in TASKS:
        test = load_task(kit.spec, task).test
        good = [s for s in test if s.label == 0]
        picks = good[:PER_TASK] + [s for s in test if s.label == 1][:PER_TASK]
        for s, image in zip(picks, read_images([s.path for s in picks], HW), strict=True):
            out[f"{len(out):03d}_{task}_{s.label}.png"] = (image, s.label, None)
        extra = good[PER_TASK : PER_TASK + 2]
        for i, image in enumerate(read_images([s.path for s in extra], HW)):
            box = (12 + 16 * i, 20, 22, 22)
            x, y, w, h = box
            image[y : y + h, x : x + w] = (255, 0, 255) if i == 0 else (0, 255, 0)
            out[f"{len(out):03d}_{task}_painted.png"] = (image, 1, box)
    return out


def _drop(folder: Path, name: str, rgb: np.ndarray) -> None:
    """As a line-scan camera would: written hidden, then renamed into place."""
    tmp = folder / f".{name}"
    assert cv2.imwrite(str(tmp), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    os.replace(tmp, folder / name)


@pytest.mark.parametrize("method", METHODS)
def test_trained_method_serves_end_to_end(
    method: str, kit, mqtt_broker: Any, mqtt_recorder: Any, runtime_factory: Any, tmp_path: Path
) -> None:
    from linewatch.export.parity import ort_infer, ort_session

    bundle = kit.bundle(method)  # `linewatch-export --run RUN --out BUNDLE --sign-key KEY`
    pub = kit.keys()[1]
    manifest = json.loads((bundle / "manifest.json").read_text())
    frames = _frames(kit)
    names = sorted(frames)
    batch = np.stack([frames[n][0] for n in names])
    data = {d["name"]: np.load(bundle / d["file"], allow_pickle=False) for d in manifest["data_inputs"]}
    _, expected, _ = ort_infer(ort_session(bundle / "model.onnx"), data, batch, batch_size=4)

    rec = mqtt_recorder([f"{SITE}/#"])
    folder = tmp_path / "spool"
    folder.mkdir()
    cfg = edge_config(
        tmp_path,
        mqtt_broker.url,
        reload={"key": str(pub), "require_signature": True, "watch_interval_s": 0.1},
        batch={"size": 2, "max_wait_ms": 20},
    )
    rt = runtime_factory(cfg, bundle, [f"dir:{folder}"])
    for n in names:
        _drop(folder, n, frames[n][0])

    def verdicts() -> dict[str, dict]:
        docs = [d for d in rec.json("cam0/result") if d["schema"] == payloads.RESULT]
        return {d["source"]["file"]: d for d in docs}

    wait_for(lambda: len(verdicts()) == len(names), 180, what=f"{len(names)} verdicts")
    wait_for(lambda: rec.json("cam0/status") != [], 60, what="a status message")
    got = verdicts()
    assert sorted(d["frame_id"] for d in got.values()) == list(range(len(names)))
    for n, score in zip(names, expected, strict=True):
        doc = got[n]
        assert abs(doc["score"] - float(score)) < 1e-4, (n, doc["score"], float(score))
        assert doc["anomalous"] == (float(score) >= 0.5) and doc["threshold"] == 0.5
        assert doc["model"] == {"name": method, "version": 1} and doc["task"] == 0
        assert bool(doc["regions"]) == doc["anomalous"] and doc["heatmap"] == doc["anomalous"]
    defect = [got[n]["anomalous"] for n in names if frames[n][1] == 1]
    good = [got[n]["anomalous"] for n in names if frames[n][1] == 0]
    painted = [n for n in names if frames[n][2] is not None]
    assert sum(defect) > sum(good) and any(got[n]["anomalous"] for n in painted)
    for n in painted:
        if got[n]["anomalous"]:
            assert any(overlaps(r["bbox"], frames[n][2]) for r in got[n]["regions"]), got[n]["regions"]
    status = rec.json("cam0/status")[-1]
    assert status["state"] == "online" and status["model"]["name"] == method and "error" not in status
    assert len(rec.on("cam0/heatmap")) == sum(d["anomalous"] for d in got.values())
    for topic, body, _ in list(rec.messages):
        if topic.endswith(("/heatmap", "/snapshot")):
            continue
        doc = json.loads(body)
        payloads.validate(payloads.schema_for(doc), doc)
    rt.shutdown()
