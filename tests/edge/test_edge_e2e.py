"""End to end against a real mosquitto: camera frames in, verdicts out, nothing lost.

Every received payload is validated against the shipped JSON Schemas. No timing assertions: waits are
generous, so a slow loaded CI machine passes too.
"""

from __future__ import annotations

import json
import threading
import urllib.request
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
from edge_testkit import (
    edge_config,
    exporter_available,
    make_bundle,
    make_export_bundle,
    overlaps,
    publish_to_store,
    wait_for,
    write_frame,
    write_video,
)

from linewatch.edge.publish import payloads

SITE = "linewatch/site/line/station"


def validate_all(rec: Any) -> None:
    """Every JSON payload on every topic matches its schema; heatmaps are JPEGs."""
    for topic, body, _ in list(rec.messages):
        if topic.endswith(("/heatmap", "/snapshot")):
            assert cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR) is not None
            continue
        doc = json.loads(body)
        payloads.validate(payloads.schema_for(doc), doc)


def results(rec: Any, camera: str = "cam0") -> list[dict[str, Any]]:
    return [r for r in rec.json(f"{camera}/result") if r["schema"] == payloads.RESULT]


def first_by_id(docs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    out: dict[int, dict[str, Any]] = {}
    for d in docs:
        out.setdefault(d["frame_id"], d)
    return out


@pytest.mark.parametrize("writer", ["onnx-helper", "export"])
def test_video_every_frame_one_correct_verdict(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any, writer: str
) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    truths = write_video(tmp_path / "line.avi", 48, defect_every=4)
    if writer == "export":
        if not exporter_available():
            pytest.skip("the real exporter (export/, torch) is not installed here")
        bundle = make_export_bundle(tmp_path / "store" / "toy-v1")
    else:
        bundle = make_bundle(tmp_path / "store" / "toy-v1")
    cfg = edge_config(tmp_path, mqtt_broker.url, camera={"at_end": "stop"}, batch={"size": 3})
    rt = runtime_factory(cfg, bundle, [str(tmp_path / "line.avi")])
    wait_for(rt.sources_finished, 120, what="the video to end")
    # health and Prometheus while running
    port = rt.server.port
    health = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read())
    assert health["status"] == "ok" and health["model"] == {"name": "toy", "version": 1}
    wait_for(lambda: len(first_by_id(results(rec))) == 48, 120, what="48 verdicts")
    prom = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    assert 'linewatch_edge_frames_total{camera="cam0"} 48.0' in prom
    assert "linewatch_edge_stage_latency_seconds_bucket" in prom
    wait_for(lambda: len(rec.json("cam0/metrics")) >= 1, 60, what="a metrics message")
    rt.shutdown()
    wait_for(lambda: rec.json("cam0/status")[-1]["state"] == "offline", 60, what="offline status")

    docs = results(rec)
    by_id = first_by_id(docs)
    assert sorted(by_id) == list(range(48)) and len(docs) == 48  # one verdict per frame
    for fid, doc in by_id.items():
        truth = truths[doc["source"]["pos"]]
        assert fid == truth.index
        assert doc["anomalous"] == truth.defective, doc
        assert doc["frame_size"] == {"width": 160, "height": 120}
        if truth.defective:
            assert doc["regions"] and overlaps(doc["regions"][0]["bbox"], truth.bbox)
            assert doc["heatmap"] is True
        else:
            assert doc["regions"] == []
    assert len(rec.on("cam0/heatmap")) == sum(t.defective for t in truths)
    assert rec.json("cam0/status")[0]["state"] == "online"
    m = rec.json("cam0/metrics")[-1]
    assert set(m["latency_ms"]) >= {"capture", "preprocess", "infer", "postprocess", "publish", "end_to_end"}
    validate_all(rec)


def test_broker_restarted_twice_mid_stream_nothing_lost(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"{SITE}/+/result", f"{SITE}/+/status"])
    folder = tmp_path / "spool"
    folder.mkdir()
    bundle = make_bundle(tmp_path / "toy-v1")
    rt = runtime_factory(edge_config(tmp_path, mqtt_broker.url), bundle, [f"dir:{folder}"], ["line1"])
    n = 0

    def produce(count: int) -> None:
        nonlocal n
        for _ in range(count):
            write_frame(folder, n, n % 5 == 4)
            n += 1

    produce(25)
    wait_for(lambda: len(first_by_id(results(rec, "line1"))) >= 10, 120, what="first verdicts")
    link = rt.cameras[0].link
    for _ in range(2):
        wait_for(link.connected.is_set, 60, what="the edge on the broker")
        before = link.stats.connects
        mqtt_broker.stop()
        produce(25)  # scored while the broker is away: they wait in the outbox
        wait_for(lambda: rt.postprocess.processed >= n, 120, what="frames scored during the outage")
        mqtt_broker.start()
        produce(10)
        wait_for(lambda b=before: link.stats.connects > b, 60, what="the edge back on the broker")
    wait_for(lambda: len(first_by_id(results(rec, "line1"))) >= n, 180, what=f"all {n} verdicts")
    docs = results(rec, "line1")
    ids = list(dict.fromkeys(d["frame_id"] for d in docs))
    assert ids == list(range(n))  # every frame, in order (duplicates allowed by QoS1, deduped here)
    for d in first_by_id(docs).values():
        assert d["anomalous"] == (d["frame_id"] % 5 == 4)
    assert rt.cameras[0].link.stats.reconnects >= 2
    wait_for(lambda: rt.outbox.depth() == 0, 60, what="outbox drained")
    validate_all(rec)


def test_hot_swap_under_load_no_frame_without_result(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    store = tmp_path / "store"
    make_bundle(store / "toy-v1", version=1)
    make_bundle(store / "toy-v2", version=2, diff_at_half=35.0)
    publish_to_store(store, store / "toy-v1")
    folder = tmp_path / "spool"
    rt = runtime_factory(edge_config(tmp_path, mqtt_broker.url), store, [f"dir:{folder}"])
    total = 120
    swapped = threading.Event()

    def produce() -> None:
        for i in range(total):
            write_frame(folder, i, i % 6 == 5)
            if i == total // 3:
                publish_to_store(store, store / "toy-v2")
                swapped.set()
            threading.Event().wait(0.01)

    producer = threading.Thread(target=produce)
    producer.start()
    producer.join(120)
    wait_for(lambda: len(first_by_id(results(rec))) >= total, 180, what="all verdicts")
    by_id = first_by_id(results(rec))
    assert sorted(by_id) == list(range(total))
    versions = [by_id[i]["model"]["version"] for i in range(total)]
    assert versions == sorted(versions) and versions[0] == 1 and versions[-1] == 2
    assert all(by_id[i]["anomalous"] == (i % 6 == 5) for i in range(total))
    wait_for(lambda: rec.json("cam0/status")[-1]["model"]["version"] == 2, 60, what="status v2")
    assert "error" not in rec.json("cam0/status")[-1]
    assert rt.models.swaps == 1
    validate_all(rec)


def test_bad_bundles_refused_old_keeps_serving(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    from linewatch.edge.model.signing import generate_keypair

    priv, pub = generate_keypair(tmp_path / "keys")
    rec = mqtt_recorder([f"{SITE}/#"])
    store = tmp_path / "store"
    make_bundle(store / "toy-v1", version=1, sign_key=priv)
    tampered = make_bundle(store / "toy-v2", version=2, sign_key=priv)
    np.save(tampered / "reference.npy", np.zeros((64, 64, 3), np.float32), allow_pickle=False)
    make_bundle(store / "toy-v3", version=3)  # unsigned
    make_bundle(store / "toy-v4", version=4, sign_key=priv)
    publish_to_store(store, store / "toy-v1")
    folder = tmp_path / "spool"
    cfg = edge_config(
        tmp_path,
        mqtt_broker.url,
        reload={"key": str(pub), "require_signature": True, "watch_interval_s": 0.1},
    )
    rt = runtime_factory(cfg, store, [f"dir:{folder}"])
    n = 0

    def frames(count: int) -> None:
        nonlocal n
        for _ in range(count):
            write_frame(folder, n, n % 4 == 3)
            n += 1

    frames(8)
    for bad, failures in (("toy-v2", 1), ("toy-v3", 2)):
        publish_to_store(store, store / bad)
        wait_for(lambda f=failures: rt.models.reload_failures >= f, 60, what=f"{bad} refused")
        wait_for(lambda: "error" in rec.json("cam0/status")[-1], 60, what="error on status")
        frames(8)
    status = rec.json("cam0/status")[-1]
    assert status["model"]["version"] == 1 and status["state"] == "online"
    assert "unsigned" in status["error"] or "signature" in status["error"]
    wait_for(lambda: len(first_by_id(results(rec))) >= n, 120, what="verdicts from the old model")
    assert {d["model"]["version"] for d in results(rec)} == {1}
    publish_to_store(store, store / "toy-v4")
    wait_for(lambda: rec.json("cam0/status")[-1]["model"]["version"] == 4, 60, what="v4 live")
    assert "error" not in rec.json("cam0/status")[-1]
    frames(4)
    wait_for(lambda: len(first_by_id(results(rec))) >= n, 120)
    assert first_by_id(results(rec))[n - 1]["model"]["version"] == 4
    validate_all(rec)


def test_anomalies_mode_publishes_summaries(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    folder = tmp_path / "spool"
    for i in range(20):
        write_frame(folder, i, i in (3, 11))
    cfg = edge_config(tmp_path, mqtt_broker.url, publish={"mode": "anomalies", "summary_period_s": 0.3})
    rt = runtime_factory(cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{folder}"])
    wait_for(lambda: rt.postprocess.processed >= 20, 120)
    rt.shutdown()
    docs = rec.json("cam0/result")
    verdicts = [d for d in docs if d["schema"] == payloads.RESULT]
    summaries = [d for d in docs if d["schema"] == payloads.SUMMARY]
    assert [d["frame_id"] for d in verdicts] == [3, 11]
    assert sum(s["frames"] for s in summaries) == 20 and sum(s["anomalies"] for s in summaries) == 2
    validate_all(rec)


def test_two_cameras_micro_batched(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"{SITE}/#"])
    folders = [tmp_path / "left", tmp_path / "right"]
    for k, folder in enumerate(folders):
        for i in range(15):
            write_frame(folder, i, (i + k) % 5 == 0)
    cfg = edge_config(tmp_path, mqtt_broker.url, batch={"size": 2, "max_wait_ms": 20})
    rt = runtime_factory(
        cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{f}" for f in folders], ["left", "right"]
    )
    for k, name in enumerate(["left", "right"]):
        wait_for(lambda n=name: len(first_by_id(results(rec, n))) >= 15, 120, what=f"{name} verdicts")
        by_id = first_by_id(results(rec, name))
        assert sorted(by_id) == list(range(15))
        assert all(d["camera"] == name and d["anomalous"] == ((i + k) % 5 == 0) for i, d in by_id.items())
        wait_for(lambda n=name: rec.json(f"{n}/status") != [], 60)
        assert rec.json(f"{name}/status")[-1]["camera"] == name
    assert rt.inference.batches <= 30
    validate_all(rec)


def test_dir_restart_scores_only_new_images(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    """A restarted edge resumes a dir: camera after the last image whose verdict it stored."""
    rec = mqtt_recorder([f"{SITE}/+/result"])
    folder = tmp_path / "spool"
    bundle = make_bundle(tmp_path / "toy-v1")
    for i in range(8):
        write_frame(folder, i, i == 5)
    rt = runtime_factory(edge_config(tmp_path, mqtt_broker.url), bundle, [f"dir:{folder}"])
    wait_for(lambda: len(results(rec)) >= 8, 120, what="the first run's verdicts")
    rt.shutdown()
    for i in range(8, 12):
        write_frame(folder, i, i == 10)
    runtime_factory(edge_config(tmp_path, mqtt_broker.url), bundle, [f"dir:{folder}"])
    wait_for(lambda: len(results(rec)) >= 12, 120, what="the second run's verdicts")
    docs = results(rec)
    assert [d["source"]["file"] for d in docs] == [f"{i:06d}.png" for i in range(12)]  # each image once
    ids = [d["frame_id"] for d in docs]
    assert ids[:8] == list(range(8)) and ids[8] >= 1000 and ids[8:] == list(range(ids[8], ids[8] + 4))
    assert [d["anomalous"] for d in docs] == [i in (5, 10) for i in range(12)]
