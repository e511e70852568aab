"""The PLC trigger handshake: the state machine alone, then over MQTT against a real mosquitto."""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import paho.mqtt.client as paho
import pytest
from edge_testkit import edge_config, make_bundle, wait_for, write_frame
from paho.mqtt.enums import CallbackAPIVersion

from linewatch.edge.handshake import HandshakeError, TriggerGate
from linewatch.edge.publish import payloads


def frame(fid: int) -> Any:
    return SimpleNamespace(frame_id=fid)


def test_one_answer_per_trigger_held_until_ack() -> None:
    gate = TriggerGate("cam0", timeout_s=5, recipes=3)
    seen: list[str] = []
    gate.listeners.append(lambda s: seen.append(s["state"]))
    assert not gate.admit(frame(0))  # no trigger: not scored, counted
    tid = gate.trigger(recipe=2, source="plc")
    f1 = frame(1)
    assert gate.admit(f1) and not gate.admit(frame(2))  # only the first frame after the trigger
    with pytest.raises(HandshakeError, match="busy"):
        gate.trigger()  # trigger while busy: refused, nothing changed
    assert gate.state == "busy"
    gate.complete(f1, anomalous=True, regions=2, score=0.9)
    snap = gate.snapshot()
    assert snap["results_ready"] and snap["result"] == {
        "trigger_id": tid, "recipe": 2, "frame_id": 1, "ok": False, "regions": 2, "score": 0.9
    }  # fmt: skip
    with pytest.raises(HandshakeError, match="waiting for its ack"):
        gate.trigger()
    with pytest.raises(HandshakeError, match="not 99"):
        gate.ack(99)
    assert gate.ack(tid)["ok"] is False and gate.state == "idle"
    with pytest.raises(HandshakeError, match="nothing to acknowledge"):
        gate.ack()
    with pytest.raises(HandshakeError, match="out of range"):
        gate.trigger(recipe=3)
    assert gate.counters == {"triggers": 1, "refused": 5, "missed": 0, "untriggered": 2, "acks": 1}
    assert seen == ["idle", "armed", "busy", "ready", "idle"][1:]  # every change told, in order


def test_missed_trigger_is_counted_and_a_late_verdict_ignored() -> None:
    gate = TriggerGate("cam0", timeout_s=0.05)
    gate.trigger()
    time.sleep(0.1)
    gate.tick()
    assert gate.state == "idle" and gate.counters["missed"] == 1 and "no frame" in gate.error
    gate.trigger()
    f = frame(5)
    assert gate.admit(f)
    time.sleep(0.1)
    gate.tick()
    assert gate.counters["missed"] == 2 and "no verdict" in gate.error
    gate.complete(f, anomalous=False, regions=0, score=0.1)  # too late: its trigger is gone
    assert gate.state == "idle" and gate.result is None


def test_handshake_over_mqtt(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    root = "linewatch/site/line/station/cam0"
    rec = mqtt_recorder([f"{root}/handshake", f"{root}/cmd/+/response", f"{root}/result"])
    spool = tmp_path / "spool"
    spool.mkdir()
    cfg = edge_config(tmp_path, mqtt_broker.url, trigger={"cameras": ["cam0"], "timeout_s": 3.0})
    rt = runtime_factory(cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{spool}"])
    gate = rt.cameras[0].gate
    last = lambda: rec.json("/handshake")[-1] if rec.on("/handshake") else {}  # noqa: E731
    wait_for(lambda: last().get("state") == "idle", 60, what="retained idle handshake")
    write_frame(spool, 0, False)  # a frame with no trigger: not scored, counted, reported
    wait_for(lambda: last().get("counters", {}).get("untriggered") == 1, 60, what="untriggered frame")
    assert not rec.on("/result")

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="plc")
    client.connect(mqtt_broker.host, mqtt_broker.port, 30)
    client.loop_start()
    client.publish(f"{root}/cmd/trigger", json.dumps({"id": "t1", "recipe": 0}), 1)
    wait_for(lambda: last().get("state") == "armed", 30, what="armed")
    write_frame(spool, 1, True)  # the defective part under the camera
    wait_for(lambda: last().get("results_ready") is True, 60, what="results ready")
    held = last()["result"]
    assert held["ok"] is False and held["regions"] >= 1 and held["trigger_id"] == 1
    client.publish(f"{root}/cmd/trigger", json.dumps({"id": "t2"}), 1)  # trigger while a result is held
    wait_for(lambda: any(r["id"] == "t2" for r in rec.json("/trigger/response")), 30, what="refusal")
    refusal = next(r for r in rec.json("/trigger/response") if r["id"] == "t2")
    assert refusal["ok"] is False and "ack" in refusal["error"]
    assert last()["result"] == held  # nothing changed
    client.publish(f"{root}/cmd/ack", json.dumps({"id": "a1", "trigger_id": 1}), 1)
    wait_for(lambda: last().get("state") == "idle", 30, what="idle after ack")
    # a trigger with no frame: missed after timeout_s, counted and reported
    client.publish(f"{root}/cmd/trigger", json.dumps({"id": "t3"}), 1)
    wait_for(lambda: last().get("counters", {}).get("missed") == 1, 30, what="missed trigger")
    assert "no frame" in last()["error"] and gate.state == "idle"
    for doc in rec.json("/handshake"):
        payloads.validate("handshake", doc)
    for doc in rec.json("/response"):
        payloads.validate("cmd_response", doc)
    wait_for(lambda: len(rec.on("/result")) >= 1, 30, what="the triggered frame's result")
    assert len([r for r in rec.json("/result") if r["schema"] == payloads.RESULT]) == 1  # and only it
    client.loop_stop()
    client.disconnect()
