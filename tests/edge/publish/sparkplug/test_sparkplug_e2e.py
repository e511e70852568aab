"""Sparkplug B mode end to end against a real mosquitto, checked by an independent host (spb_host.py).

One runtime, two cameras (two devices), frames from dir: sources: births before data, seq continuity
inside each session, bdSeq over reconnects and rebirths, aliases resolved through the births, and no
verdict lost across two broker restarts (replayed ones flagged is_historical). Commands: rebirth (and
a storm of them), DCMD writes mapped onto set-threshold / snapshot / reload, and bad DCMDs that change
nothing.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import paho.mqtt.client as paho
import pytest
from edge_testkit import edge_config, make_bundle, wait_for, write_frame
from paho.mqtt.enums import CallbackAPIVersion
from spb_host import Host, Message, encode

GROUP, NODE = "plant", "box1"
CAMS = ["line1", "line2"]
BOOLEAN, DOUBLE, STRING = 11, 10, 12


def sparkplug_config(tmp_path: Path, url: str, **sparkplug: Any) -> Any:
    sp = {"group_id": GROUP, "edge_node_id": NODE, "rebirth_min_interval_s": 0.5, **sparkplug}
    return edge_config(tmp_path, url, mqtt={"payload": "sparkplug"}, sparkplug=sp)


def frames(msgs: list[Message], device: str) -> dict[int, Message]:
    """Frame id -> the first DDATA that carried it (QoS1 may repeat a row in a later session)."""
    out: dict[int, Message] = {}
    for m in msgs:
        if m.kind == "DDATA" and m.device == device and m.value("Inspection/Frame ID") is not None:
            out.setdefault(m.value("Inspection/Frame ID"), m)
    return out


def check_sessions(msgs: list[Message]) -> list[list[Message]]:
    """Births before data, seq 0.. +1 (mod 256) inside each session; returns the sessions."""
    msgs = [m for m in msgs if m.kind not in ("NDEATH", "NCMD", "DCMD")]  # what the node says
    assert msgs and msgs[0].kind == "NBIRTH", "the first message of the node must be its NBIRTH"
    sessions: list[list[Message]] = []
    for m in msgs:
        if m.kind == "NBIRTH":
            sessions.append([])
        sessions[-1].append(m)
    for session in sessions:
        assert session[0].seq == 0
        born: set[str] = set()
        for prev, cur in itertools.pairwise(session):
            assert cur.seq == (prev.seq + 1) % 256, f"seq gap {prev.seq} -> {cur.seq} ({cur.topic})"
        for m in session:
            if m.kind == "DBIRTH":
                born.add(m.device)
            elif m.kind.startswith("D"):
                assert m.device in born, f"{m.kind} of {m.device} before its DBIRTH"
                for metric in m.metrics:  # after the birth: by alias, no name on the wire
                    assert metric["alias"] is not None and metric["name"] is not None
    return sessions


def check_births(msgs: list[Message]) -> None:
    """Every birth metric has a name, an alias and a datatype; aliases unique over the whole node."""
    births = [m for m in msgs if m.kind.endswith("BIRTH")]
    last = {}
    for b in births:
        for metric in b.metrics:
            assert metric["name"] and metric["alias"] is not None and metric["datatype"], metric
        last[b.device] = b
    aliases = [metric["alias"] for b in last.values() for metric in b.metrics]
    assert len(aliases) == len(set(aliases))
    assert last[None].value("Node Control/Rebirth") is False
    assert {d for d in last if d} == set(CAMS)


def bdseqs(msgs: list[Message], kind: str) -> list[int]:
    return [m.value("bdSeq") for m in msgs if m.kind == kind]


def test_births_seq_bdseq_aliases_and_nothing_lost_over_two_broker_restarts(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"spBv1.0/{GROUP}/#"])
    spools = [tmp_path / c for c in CAMS]
    rt = runtime_factory(
        sparkplug_config(tmp_path, mqtt_broker.url, heatmap=True), make_bundle(tmp_path / "toy-v1"),
        [f"dir:{s}" for s in spools], CAMS,
    )  # fmt: skip
    n = 0

    def produce(count: int) -> None:
        nonlocal n
        for _ in range(count):
            for s in spools:
                write_frame(s, n, n % 5 == 4)
            n += 1

    produce(10)
    wait_for(lambda: all(len(frames(Host().feed(rec.messages), c)) >= 10 for c in CAMS), 120, what="first")
    link = rt.sparkplug.link
    for _ in range(2):
        wait_for(link.connected.is_set, 60, what="the edge on the broker")
        before = link.stats.connects
        mqtt_broker.stop()
        produce(12)  # scored while the broker is away: they wait in the outbox
        wait_for(lambda: rt.postprocess.processed >= 2 * n, 120, what="frames scored during the outage")
        mqtt_broker.start()
        produce(5)
        wait_for(lambda b=before: link.stats.connects > b, 60, what="the edge back on the broker")
    wait_for(lambda: all(len(frames(Host().feed(rec.messages), c)) >= n for c in CAMS), 180, what="all")
    wait_for(lambda: rt.outbox.depth() == 0, 60, what="outbox drained")
    rt.shutdown()
    wait_for(lambda: "NDEATH" in {m.kind for m in Host().feed(rec.messages)}, 30, what="NDEATH")

    host = Host().feed(rec.messages)
    sessions = check_sessions(host)
    check_births(host)
    assert len(sessions) >= 3  # one birth per connection at least: start + two restarts
    for cam in CAMS:
        got = frames(host, cam)
        assert sorted(got) == list(range(n)), f"{cam}: verdicts missing"
        assert list(got) == list(range(n)), f"{cam}: verdicts out of order"  # first copies, in order
        for fid, m in got.items():  # the overlay of an anomaly rides along as a bytes metric
            heatmap = m.value("Inspection/Heatmap")
            assert (heatmap is not None) == (fid % 5 == 4), fid
            if heatmap is not None:
                assert cv2.imdecode(np.frombuffer(heatmap, np.uint8), cv2.IMREAD_COLOR) is not None
    # the verdict, reported by exception: follow Anomalous through the stream as a host would
    for cam in CAMS:
        state = None
        for m in [m for m in host if m.device == cam and m.kind in ("DBIRTH", "DDATA")]:
            if m.kind == "DBIRTH":
                continue  # a birth carries the latest value, not the next row's predecessor
            if m.value("Inspection/Anomalous") is not None:
                state = m.value("Inspection/Anomalous")
            fid = m.value("Inspection/Frame ID")
            if fid is not None and not any(x["is_historical"] for x in m.metrics):
                assert state == (fid % 5 == 4), f"{cam} frame {fid}"
    # store-and-forward: replayed rows are flagged, every metric of them; births never
    historical = [m for m in host if any(x["is_historical"] for x in m.metrics)]
    assert historical, "rows written while the broker was away must arrive as is_historical"
    assert all(m.kind == "DDATA" and all(x["is_historical"] for x in m.metrics) for m in historical)
    # bdSeq: +1 per CONNECT (failed attempts count too), the NDEATH names the session it ends
    births = bdseqs(host, "NBIRTH")
    assert all(b > a for a, b in itertools.pairwise(births)), births
    assert bdseqs(host, "NDEATH")[-1] == births[-1]


def _cmd_client(broker: Any) -> paho.Client:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="host-cmd")
    client.connect(broker.host, broker.port, 30)
    client.loop_start()
    return client


def _device_value(rec: Any, device: str, name: str) -> Any:
    """The latest value a host knows of ``device``'s metric ``name`` (births and DATA, in order)."""
    value = None
    for m in Host().feed(rec.messages):
        if m.device == device and m.kind in ("DBIRTH", "DDATA"):
            v = m.value(name)
            value = v if v is not None else value
    return value


def test_rebirth_storm_and_dcmd_commands_bad_ones_change_nothing(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"spBv1.0/{GROUP}/#"])
    spool = tmp_path / "line1"
    for i in range(3):
        write_frame(spool, i, i == 2)
    cfg = sparkplug_config(tmp_path, mqtt_broker.url)
    rt = runtime_factory(cfg, make_bundle(tmp_path / "store" / "toy-v1"), [f"dir:{spool}"], ["line1"])
    wait_for(lambda: len(frames(Host().feed(rec.messages), "line1")) >= 3, 120, what="verdicts")
    client = _cmd_client(mqtt_broker)
    ncmd, dcmd = f"spBv1.0/{GROUP}/NCMD/{NODE}", f"spBv1.0/{GROUP}/DCMD/{NODE}/line1"

    # rebirth on command: NBIRTH seq 0 with the same bdSeq, then the DBIRTH
    nbirths = lambda: [m for m in Host().feed(rec.messages) if m.kind == "NBIRTH"]  # noqa: E731
    wait_for(lambda: len(nbirths()) == 1, 30, what="the first NBIRTH")
    client.publish(
        ncmd, encode([{"name": "Node Control/Rebirth", "datatype": BOOLEAN, "boolean_value": True}]), 1
    )
    wait_for(lambda: len(nbirths()) == 2, 30, what="rebirth")
    first, second = nbirths()
    assert second.seq == 0 and second.value("bdSeq") == first.value("bdSeq")
    # a storm: 30 requests in a burst give births at most every rebirth_min_interval_s, none lost
    storm = encode([{"alias": 2, "boolean_value": True}])  # by alias, as hosts write after a birth
    for _ in range(30):
        client.publish(ncmd, storm, 1)
    wait_for(lambda: rt.sparkplug.link.rebirth_requests == 31, 30, what="all rebirth requests seen")
    link = rt.sparkplug.link
    wait_for(lambda: not link._births_due and len(nbirths()) == link.births_sent, 30, what="births in")
    assert 3 <= len(nbirths()) <= 5, len(nbirths())  # one per rebirth_min_interval_s, not 30
    assert link.rebirths_coalesced == 31 - (len(nbirths()) - 1)  # every request: a birth or merged
    check_sessions(Host().feed(rec.messages))

    # bad DCMDs: refused, counted, nothing changed
    bad = [
        b"\xff\xff not protobuf",
        encode([{"name": "Inspection/Nonsense", "datatype": DOUBLE, "double_value": 0.3}]),  # unknown
        encode([{"name": "Inspection/Threshold", "datatype": STRING, "string_value": "0.3"}]),  # type
        encode([{"name": "Inspection/Threshold", "double_value": 7.0}]),  # outside (0, 1)
        encode([{"name": "Inspection/Score", "datatype": DOUBLE, "double_value": 0.1}]),  # read-only
        encode([  # one bad metric spoils the whole DCMD: the good threshold is not applied either
            {"name": "Inspection/Threshold", "datatype": DOUBLE, "double_value": 0.3},
            {"name": "Command/Snapshot", "datatype": BOOLEAN, "string_value": "yes"},
        ]),
    ]  # fmt: skip
    for raw in bad:
        client.publish(dcmd, raw, 1)
    wait_for(lambda: _device_value(rec, "line1", "Command/Rejected") == len(bad), 30, what="refusals")
    assert rt.cameras[0].threshold == 0.5
    assert _device_value(rec, "line1", "Inspection/Threshold") == 0.5
    assert _device_value(rec, "line1", "Command/Last Result").startswith("refused: ")

    # good DCMDs: threshold, snapshot (a JPEG as a bytes metric), reload
    client.publish(
        dcmd, encode([{"name": "Inspection/Threshold", "datatype": DOUBLE, "double_value": 0.3}]), 1
    )
    wait_for(lambda: _device_value(rec, "line1", "Inspection/Threshold") == 0.3, 30, what="new threshold")
    assert rt.cameras[0].threshold == 0.3
    client.publish(dcmd, encode([{"alias": 1000 + 17, "boolean_value": True}]), 1)  # Command/Snapshot
    wait_for(lambda: _device_value(rec, "line1", "Snapshot/JPEG") is not None, 30, what="snapshot")
    jpeg = np.frombuffer(_device_value(rec, "line1", "Snapshot/JPEG"), np.uint8)
    assert cv2.imdecode(jpeg, cv2.IMREAD_COLOR).shape[:2] == (120, 160)
    client.publish(dcmd, encode([{"name": "Command/Reload", "datatype": BOOLEAN, "boolean_value": True}]), 1)
    wait_for(lambda: _device_value(rec, "line1", "Command/Last Result") == "reload: ok", 60, what="reload")
    assert _device_value(rec, "line1", "Model/Name") == "toy"
    assert rt.commands.counters["error"] == len(bad)
    client.loop_stop()
    client.disconnect()


def test_rows_left_by_json_mode_are_delivered_then_sparkplug_rows(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    """Switching a box from JSON to Sparkplug keeps its outbox: old rows go out as written, in order."""
    from linewatch.edge.config import MqttConfig
    from linewatch.edge.publish.outbox import Outbox
    from linewatch.edge.publish.sparkplug.link import SparkplugLink
    from linewatch.edge.publish.sparkplug.node import SparkplugNode

    rec = mqtt_recorder(["#"])
    box = Outbox(tmp_path / "o.sqlite")
    box.add("cam0", "linewatch/s/l/st/cam0/result", b'{"frame_id": 0}')
    node = SparkplugNode(GROUP, NODE, ["cam0"])
    raw = node.frame_data("cam0", 1.0, {"Inspection/Frame ID": 1, "Inspection/Score": 0.2})
    box.add("cam0", node.topic("DDATA", "cam0"), raw)
    conf = MqttConfig(url=mqtt_broker.url, reconnect_min_s=0.05, reconnect_max_s=0.5)
    link = SparkplugLink(conf, node, box, on_dcmd=lambda d, r: None, refresh=lambda: None)
    link.start()
    wait_for(lambda: box.depth() == 0, 60, what="both rows delivered")
    link.stop(5)
    link.join(20)
    topics = [t for t, _, _ in rec.messages]
    assert topics.index("linewatch/s/l/st/cam0/result") < topics.index(node.topic("DDATA", "cam0"))
    host = Host().feed(rec.messages)
    data = [m for m in host if m.kind == "DDATA"]
    assert data[0].value("Inspection/Frame ID") == 1 and all(x["is_historical"] for x in data[0].metrics)


def test_vendored_module_is_the_protoc_output_of_the_schema(tmp_path: Path) -> None:
    """sparkplug_b_pb2.py is generated (make sparkplug-proto): it must match the .proto beside it."""
    import subprocess
    import sys

    from spb_host import PROTO

    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parents[1]}", f"--python_out={tmp_path}",
         str(PROTO.relative_to(PROTO.parents[1]))],
        check=True,
    )  # fmt: skip
    fresh = (tmp_path / "sparkplug" / "sparkplug_b_pb2.py").read_text()
    assert (PROTO.parent / "sparkplug_b_pb2.py").read_text() == fresh


pytestmark = pytest.mark.timeout(300)


def test_plc_handshake_over_sparkplug(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path, runtime_factory: Any
) -> None:
    rec = mqtt_recorder([f"spBv1.0/{GROUP}/#"])
    spool = tmp_path / "line1"
    spool.mkdir()
    cfg = sparkplug_config(tmp_path, mqtt_broker.url)
    cfg.trigger.cameras = ["line1"]
    rt = runtime_factory(cfg, make_bundle(tmp_path / "toy-v1"), [f"dir:{spool}"], ["line1"])
    value = lambda name: _device_value(rec, "line1", name)  # noqa: E731
    wait_for(lambda: value("Handshake/State") == "idle", 60, what="idle in the DBIRTH")
    client = _cmd_client(mqtt_broker)
    dcmd = f"spBv1.0/{GROUP}/DCMD/{NODE}/line1"
    client.publish(dcmd, encode([{"name": "Handshake/Trigger", "datatype": DOUBLE, "double_value": 0.0}]), 1)
    wait_for(lambda: value("Command/Rejected") == 1, 30, what="wrong datatype refused")
    assert rt.cameras[0].gate.state == "idle"
    client.publish(dcmd, encode([{"name": "Handshake/Trigger", "datatype": 3, "int_value": 0}]), 1)
    wait_for(lambda: value("Handshake/State") == "armed", 30, what="armed")
    write_frame(spool, 0, True)
    wait_for(lambda: value("Handshake/Results Ready") is True, 60, what="results ready")
    assert value("Handshake/OK") is False and value("Handshake/Regions") >= 1
    client.publish(dcmd, encode([{"name": "Handshake/Ack", "datatype": BOOLEAN, "boolean_value": True}]), 1)
    wait_for(lambda: value("Handshake/State") == "idle", 30, what="idle after ack")
    assert value("Handshake/Results Ready") is False
    client.loop_stop()
    client.disconnect()
