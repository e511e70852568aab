"""The MQTT link against a real mosquitto: ordered delivery from the outbox, acks, status, Last Will,
reconnects after broker restarts, MQTT 5, TLS and passwords."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest
from edge_testkit import wait_for

from linewatch.edge.config import MqttConfig, TlsConfig
from linewatch.edge.publish import payloads
from linewatch.edge.publish.mqtt import MqttLink
from linewatch.edge.publish.outbox import Outbox

ROOT = "linewatch/s/l/st/cam0"


def status(state: str) -> dict[str, Any]:
    return payloads.status_payload("cam0", state, {"name": "m", "version": 1}, "ort-cpu")


def make_link(url: str, outbox: Outbox, **cfg: Any) -> MqttLink:
    conf = MqttConfig(url=url, reconnect_min_s=0.05, reconnect_max_s=0.5, **cfg)
    link = MqttLink(conf, "cam0", ROOT, outbox, status)
    link.start()
    return link


def numbers(rec: Any) -> list[int]:
    return [int(p) for p in rec.on("/result")]


def test_delivers_in_order_acks_and_status(mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path) -> None:
    rec = mqtt_recorder([f"{ROOT}/#"])
    box = Outbox(tmp_path / "o.sqlite")
    link = make_link(mqtt_broker.url, box)
    for i in range(200):
        box.add("cam0", f"{ROOT}/result", str(i).encode())
        link.wake()
    wait_for(lambda: len(numbers(rec)) >= 200, what="200 results")
    wait_for(lambda: box.depth() == 0, what="outbox drained by PUBACKs")
    assert numbers(rec) == list(range(200))
    statuses = rec.json("/status")
    assert statuses[0]["state"] == "online"
    payloads.validate("status", statuses[0])
    link.stop(5)
    link.join(20)
    wait_for(lambda: rec.json("/status")[-1]["state"] == "offline", what="offline status")
    assert link.stats.delivered == 200


def test_retained_offline_status_and_last_will(mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.sqlite")
    link = make_link(mqtt_broker.url, box)
    wait_for(link.connected.is_set, what="connection")
    link.stop(1)
    link.join(20)
    late = mqtt_recorder([f"{ROOT}/status"])  # subscribes after the fact: sees the retained one
    wait_for(lambda: len(late.on("/status")) == 1, what="retained status")
    assert late.json("/status")[0]["state"] == "offline"
    assert late.messages[0][2] is True  # retain flag


def test_broker_down_then_restarted_twice_nothing_lost(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{ROOT}/result"])
    box = Outbox(tmp_path / "o.sqlite")
    link = make_link(mqtt_broker.url, box)
    n = 0
    for _round in range(3):
        for _ in range(50):
            box.add("cam0", f"{ROOT}/result", str(n).encode())
            n += 1
        link.wake()
        if _round < 2:
            wait_for(link.connected.is_set, 60, what="the link on the broker")
            before = link.stats.connects
            mqtt_broker.stop()  # some rows in flight, some not yet sent
            for _ in range(50):  # produced while the broker is unreachable
                box.add("cam0", f"{ROOT}/result", str(n).encode())
                n += 1
            mqtt_broker.start()
            wait_for(lambda b=before: link.stats.connects > b, 60, what="the link back on the broker")
    wait_for(lambda: len(set(numbers(rec))) >= n, 120, what=f"all {n} results")
    wait_for(lambda: box.depth() == 0, what="outbox drained")
    got = numbers(rec)
    first_seen = list(dict.fromkeys(got))  # QoS1 may duplicate; subscribers dedupe on the id
    assert first_seen == list(range(n))
    assert link.stats.reconnects >= 2
    link.stop(2)
    link.join(20)


def test_bounded_outbox_keeps_newest_while_broker_down(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{ROOT}/result"])
    mqtt_broker.stop()
    box = Outbox(tmp_path / "o.sqlite", max_rows=10)
    link = make_link(mqtt_broker.url, box)
    for i in range(25):
        box.add("cam0", f"{ROOT}/result", str(i).encode())
    assert box.dropped == 15
    mqtt_broker.start()
    link.wake()
    wait_for(lambda: len(numbers(rec)) >= 10, 120, what="the kept results")
    wait_for(lambda: box.depth() == 0)
    assert list(dict.fromkeys(numbers(rec))) == list(range(15, 25))
    link.stop(2)
    link.join(20)


def test_mqtt5(mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path) -> None:
    rec = mqtt_recorder([f"{ROOT}/#"], protocol=paho.MQTTv5)
    box = Outbox(tmp_path / "o.sqlite")
    link = make_link(mqtt_broker.url, box, protocol="5")
    for i in range(20):
        box.add("cam0", f"{ROOT}/result", str(i).encode())
    link.wake()
    wait_for(lambda: len(numbers(rec)) >= 20)
    assert numbers(rec) == list(range(20))
    link.stop(2)
    link.join(20)


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, Path]:
    d = tmp_path / "pki"
    d.mkdir()
    ca_key, ca, key, csr, cert = (d / n for n in ("ca.key", "ca.pem", "srv.key", "srv.csr", "srv.pem"))
    try:
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
                 "-days", "2", "-subj", "/CN=linewatch-test-ca")  # fmt: skip
        _openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            "/CN=127.0.0.1",
        )
        ext = d / "ext.cnf"
        ext.write_text("subjectAltName=IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
                 "-out", str(cert), "-days", "2", "-extfile", str(ext))  # fmt: skip
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"openssl cannot make test certificates: {exc}")
    for p in d.iterdir():
        p.chmod(0o644)
    return {"ca": ca, "cert": cert, "key": key}


def test_tls_and_password(
    mqtt_broker_factory: Any, tls_files: dict[str, Path], tmp_path: Path, monkeypatch: Any
) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "edge", "s3cret"], check=True, capture_output=True)
    pwfile.chmod(0o644)
    broker = mqtt_broker_factory(
        extra=[
            f"cafile {tls_files['ca']}",
            f"certfile {tls_files['cert']}",
            f"keyfile {tls_files['key']}",
            f"password_file {pwfile}",
        ],
        anonymous=False,
    )
    box = Outbox(tmp_path / "o.sqlite")
    url = f"mqtts://127.0.0.1:{broker.port}"
    wrong = make_link(url, box, username="edge", tls=TlsConfig(ca=tls_files["ca"]), password_file=None)
    pw = tmp_path / "edge.pw"
    pw.write_text("s3cret\n")
    link = make_link(url, box, username="edge", password_file=pw, tls=TlsConfig(ca=tls_files["ca"]))
    wait_for(link.connected.is_set, 60, what="TLS + password connection")
    box.add("cam0", f"{ROOT}/result", b'{"x": 1}')
    link.wake()
    wait_for(lambda: box.depth() == 0, 60, what="delivery over TLS")
    assert not wrong.connected.is_set() and wrong.stats.connect_failures >= 1
    for lk in (wrong, link):
        lk.stop(1)
        lk.join(20)


def test_backoff_delays_grow_capped_with_jitter() -> None:
    import random

    from linewatch.edge.publish.mqtt import backoff_delay

    rng = random.Random(7)
    for attempt in range(60):
        nominal = min(30.0, 0.2 * 2**attempt)
        delays = [backoff_delay(attempt, 0.2, 30.0, rng) for _ in range(50)]
        assert all(nominal / 2 <= d <= nominal for d in delays)
        assert max(delays) - min(delays) > nominal / 10  # jittered, not lock-step


def test_backoff_not_defeated_by_new_results(
    mqtt_broker: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 17: results woke the link while the broker was down and every backoff returned at once."""
    import logging
    import math
    import threading
    import time

    caplog.set_level(logging.INFO, "linewatch.edge.publish.mqtt")
    box = Outbox(tmp_path / "o.sqlite")
    mqtt_broker.stop()  # nothing listens on its port any more: every attempt is refused at once
    url = mqtt_broker.url
    low, high, window = 0.05, 2.0, 4.0
    # a camera name of its own: log rate limits are per camera and per process (other tests used cam0)
    link = MqttLink(
        MqttConfig(url=url, reconnect_min_s=low, reconnect_max_s=high), "cam-b", ROOT, box, status
    )
    link.start()
    stop = threading.Event()

    def results() -> None:  # the line keeps scoring: a result (and a wake-up) every 5 ms
        n = 0
        while not stop.wait(0.005):
            box.add("cam-b", f"{ROOT}/result", str(n).encode())
            link.wake()
            n += 1

    producer = threading.Thread(target=results)
    t0 = time.monotonic()
    producer.start()
    try:
        time.sleep(window)
        attempts = link.stats.connect_failures
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        producer.join(10)
    # Each wait is at least half its nominal low*2^k: over `elapsed` seconds at most
    # log2(elapsed / (low/2) + 1) attempts while doubling, plus the ones at the cap.
    doubling = math.ceil(math.log2(elapsed / (low / 2) + 1))
    bound = doubling + math.ceil(elapsed / (high / 2)) + 1
    assert 2 <= attempts <= bound, (attempts, bound)
    unreachable = [r for r in caplog.records if r.getMessage().startswith("broker unreachable")]
    assert len(unreachable) == 1, [r.getMessage() for r in unreachable]  # the rest are counted, not logged
    assert box.depth() >= 400  # the results kept coming meanwhile
    t_stop = time.monotonic()
    link.stop(1)
    link.join(10)
    assert not link.alive and time.monotonic() - t_stop < 2.0  # stop cuts the backoff short


def test_stop_ends_a_long_backoff_promptly(mqtt_broker: Any, tmp_path: Path) -> None:
    import time

    box = Outbox(tmp_path / "o.sqlite")
    mqtt_broker.stop()
    conf = MqttConfig(url=mqtt_broker.url, reconnect_min_s=20, reconnect_max_s=60)
    link = MqttLink(conf, "cam0", ROOT, box, status)
    link.start()
    wait_for(lambda: link.stats.connect_failures >= 1, 30, what="the first refused attempt")
    t0 = time.monotonic()
    link.stop(1)
    link.join(10)
    assert not link.alive and time.monotonic() - t0 < 2.0
    assert link.stats.connect_failures == 1  # waiting 10-20 s, not retrying
