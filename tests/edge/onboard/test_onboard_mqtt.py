"""End to end over a real mosquitto: cmd/onboard while frames flow.

No frame goes without a verdict, the new part's defects are caught by the new version, the earlier
part scores exactly as before, and bad requests are answered with an error while the model stays.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import threading
from pathlib import Path
from typing import Any

import pytest
from edge_testkit import edge_config, wait_for
from test_edge_commands import ROOT, Commander

from linewatch.edge.runtime import EdgeRuntime


def _feed(folder: Path, files: list[Path], start: int, stop: threading.Event | None = None) -> int:
    """Copy frames in as a camera would (hidden write, rename); returns the next index."""
    i = start
    for src in files:
        if stop is not None and stop.is_set():
            break
        tmp = folder / f".{i:06d}{src.suffix}"
        shutil.copyfile(src, tmp)
        os.replace(tmp, folder / f"{i:06d}-{src.parents[2].name}-{src.parent.name}-{src.name}")
        i += 1
    return i


def _b64(paths: list[Path]) -> list[str]:
    return [base64.b64encode(p.read_bytes()).decode("ascii") for p in paths]


def test_onboard_over_mqtt_while_frames_flow(
    fewshot, mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{ROOT}/result"])
    spool = tmp_path / "spool"
    spool.mkdir()
    camera_tests = sorted((fewshot.data / "camera" / "test").rglob("*.png"))
    brick_tests = sorted((fewshot.data / "brick" / "test").rglob("*.png"))
    cfg = edge_config(
        tmp_path,
        mqtt_broker.url,
        reload={
            "key": str(fewshot.release_pub),
            "box_keys": [str(fewshot.box_pub)],
            "require_signature": True,
        },
        onboard={"key": str(fewshot.box_key)},
    )
    rt = EdgeRuntime(cfg, fewshot.store, [f"dir:{spool}"], ["cam0"])
    rt.start()
    cmd = Commander(mqtt_broker)
    try:
        n = _feed(spool, camera_tests, 0)
        wait_for(lambda: rt.postprocess.processed >= n, 120, what="first frames scored")
        # Bad requests first: each answered with an error, the model untouched.
        for request, message in [
            ({"task": "brick", "images": _b64(camera_tests[:1])}, "2 to 8 good images"),
            ({"task": "brick", "images": ["bm90IGFuIGltYWdl", "!!"]}, "unreadable images"),
            ({"task": "brick", "folder": "x"}, "image_root"),
            ({"task": "brick", "images": ["a", "b"], "remove": True}, "payload"),
        ]:
            resp = cmd.send("onboard", json.dumps(request).encode())
            assert not resp["ok"] and message in resp["error"], resp
        assert rt.models.loaded.version == 1
        # Onboard while frames keep arriving.
        stop = threading.Event()
        feeder = threading.Thread(target=lambda: _feed(spool, camera_tests * 3, n, stop), daemon=True)
        feeder.start()
        support = sorted((fewshot.data / "brick" / "train" / "good").glob("*.png"))[:4]
        resp = cmd.send(
            "onboard",
            json.dumps({"id": "o1", "task": "brick", "images": _b64(support)}).encode(),
            timeout=120,
        )
        stop.set()
        feeder.join(30)
        assert resp["ok"], resp
        assert (
            resp["result"]["model"] == {"name": "fs", "version": 2} and resp["result"]["tasks"][1] == "brick"
        )
        assert rt.models.loaded.version == 2
        n = len(list(spool.iterdir()))
        n = _feed(spool, brick_tests + camera_tests, n)
        wait_for(lambda: rt.postprocess.processed >= n, 120, what="every frame scored")
        wait_for(lambda: len(rec.json("/result")) >= n, 60, what="every verdict published")
        results = rec.json("/result")
        assert sorted(r["frame_id"] for r in results) == list(range(n))  # no frame without a verdict
        v1 = {r["source"]["file"].split("-", 1)[1]: r for r in results if r["model"]["version"] == 1}
        v2 = {r["source"]["file"].split("-", 1)[1]: r for r in results if r["model"]["version"] == 2}
        defects = [r for k, r in v2.items() if k.startswith("brick-") and "-good-" not in k]
        assert len(defects) == 6 and all(r["task_name"] == "brick" for r in defects)
        assert sum(r["anomalous"] for r in defects) >= 3, [r["score"] for r in defects]
        cameras = [k for k in v2 if k.startswith("camera-")]
        assert len(cameras) == len(camera_tests)
        for k in cameras:  # the earlier part: the same verdict as before the onboarding
            assert v2[k]["task_name"] == v1[k]["task_name"] == "camera"
            assert v2[k]["score"] == pytest.approx(v1[k]["score"], abs=1e-4)
    finally:
        cmd.close()
        rt.shutdown()
