"""The shipped broker setup, for real: make-test-pki.sh, mosquitto.conf (TLS) and the ACL.

The test runs the script, starts mosquitto with the shipped config (paths and port
rewritten to the test's folder; nothing else changed), then checks that TLS with the
generated CA and passwords works, that wrong credentials are refused, and that the
ACL lets only the operator command an edge.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from linewatch.deploy.localbroker import MOSQUITTO, LocalBroker, free_port
from linewatch.deploy.refresh.config import MqttConfig
from linewatch.deploy.refresh.confirm import wait_for_version

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "mosquitto"
ROOT = "linewatch/plant1/line2/station3/cam0"


def _missing_tools() -> str | None:
    for tool in ("openssl", "mosquitto_passwd", "bash"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    if MOSQUITTO is None:
        return "mosquitto is not installed"
    return None


@pytest.fixture(scope="module")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    missing = _missing_tools()
    if missing:
        pytest.skip(f"{missing}: cannot build the test PKI or run the broker")
    pki = tmp_path_factory.mktemp("pki")
    subprocess.run(
        ["bash", str(DEPLOY / "make-test-pki.sh"), str(pki)], check=True, capture_output=True, timeout=120
    )
    passwords = dict(line.split("=", 1) for line in (pki / "passwords.env").read_text().split())
    shutil.copy(DEPLOY / "acl", pki / "acl")
    port = free_port()
    conf = (DEPLOY / "mosquitto.conf").read_text()
    assert "listener 8883\n" in conf and "/etc/mosquitto/linewatch/" in conf
    conf = conf.replace("/etc/mosquitto/linewatch/", f"{pki}/")
    conf = conf.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    conf = conf.replace("persistence_location /var/lib/mosquitto/", f"persistence_location {pki}/")
    if os.geteuid() == 0:
        # As root, mosquitto drops to user `mosquitto`, who cannot read pytest's private tmp dir.
        conf += "\nuser root\n"
    with LocalBroker(pki / "run", port, config=conf) as broker:
        yield {"port": port, "pki": pki, "passwords": passwords, "broker": broker}


class Client:
    """A connected paho client (MQTT 5, TLS) that records messages and PUBACK reason codes."""

    def __init__(self, broker: dict[str, Any], user: str, password: str | None = None) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.acks: dict[int, Any] = {}
        self.connected = threading.Event()
        self.reason: Any = None
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{user}-{os.urandom(3).hex()}", protocol=mqtt.MQTTv5
        )
        self.client.tls_set(ca_certs=str(broker["pki"] / "ca.crt"), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        self.client.username_pw_set(
            user, password if password is not None else broker["passwords"][f"{user.upper()}_PASSWORD"]
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = lambda _c, _u, msg: self.messages.append((msg.topic, msg.payload))
        self.client.on_publish = self._on_publish
        self.client.connect("localhost", broker["port"])  # the name in the server certificate
        self.client.loop_start()
        self.connected.wait(10)

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        self.reason = reason
        self.connected.set()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        self.acks[mid] = reason

    def publish(self, topic: str, payload: str, *, retain: bool = False) -> Any:
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        deadline = time.monotonic() + 5
        while info.mid not in self.acks and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.acks.get(info.mid)

    def subscribe(self, topic: str) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *_a: done.set()
        self.client.subscribe(topic, qos=1)
        assert done.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_pki_script_output(tls_broker: dict[str, Any]) -> None:
    pki: Path = tls_broker["pki"]
    for name in ("ca.crt", "server.crt", "server.key", "passwd", "client-edge.crt", "client-operator.key"):
        assert (pki / name).is_file(), name
    assert set(tls_broker["passwords"]) == {
        "EDGE_PASSWORD",
        "SCADA_PASSWORD",
        "OPERATOR_PASSWORD",
        "REFRESH_PASSWORD",
    }
    assert (pki / "server.key").stat().st_mode & 0o077 == 0  # private keys are private
    san = subprocess.run(
        ["openssl", "x509", "-in", str(pki / "server.crt"), "-noout", "-ext", "subjectAltName"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "DNS:localhost" in san and "IP Address:127.0.0.1" in san


def test_tls_client_with_ca_and_password_connects(tls_broker: dict[str, Any]) -> None:
    edge = Client(tls_broker, "edge")
    try:
        assert edge.reason is not None and not edge.reason.is_failure, edge.reason
    finally:
        edge.close()


def test_wrong_password_is_refused(tls_broker: dict[str, Any]) -> None:
    bad = Client(tls_broker, "scada", password="not-the-password")
    try:
        assert bad.reason is not None and bad.reason.is_failure
        assert "authori" in str(bad.reason).lower() or "password" in str(bad.reason).lower()
    finally:
        bad.close()


def test_plain_tcp_is_not_served(tls_broker: dict[str, Any]) -> None:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain")
    client.username_pw_set("edge", tls_broker["passwords"]["EDGE_PASSWORD"])
    client.connect("127.0.0.1", tls_broker["port"], keepalive=5)
    rc = mqtt.MQTT_ERR_SUCCESS
    deadline = time.monotonic() + 5
    while rc == mqtt.MQTT_ERR_SUCCESS and time.monotonic() < deadline:
        rc = client.loop(timeout=0.2)
    assert rc != mqtt.MQTT_ERR_SUCCESS  # the TLS listener hangs up on a plaintext CONNECT
    assert not client.is_connected()


def test_acl_only_operator_may_command_the_edge(tls_broker: dict[str, Any]) -> None:
    edge = Client(tls_broker, "edge")
    scada = Client(tls_broker, "scada")
    operator = Client(tls_broker, "operator")
    try:
        edge.subscribe(f"{ROOT}/cmd/#")
        scada.subscribe(f"{ROOT}/#")

        denied = scada.publish(f"{ROOT}/cmd/reload", "{}")
        assert denied is not None and denied.value == 0x87, denied  # MQTT 5: not authorized
        time.sleep(0.5)
        assert edge.messages == []  # ...and it never reached the edge

        allowed = operator.publish(f"{ROOT}/cmd/reload", json.dumps({"by": "operator"}))
        assert allowed is not None and not allowed.is_failure
        deadline = time.monotonic() + 5
        while not edge.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        assert [t for t, _ in edge.messages] == [f"{ROOT}/cmd/reload"]

        # SCADA reads what the edge publishes, but cannot forge results.
        assert not edge.publish(f"{ROOT}/result", '{"frame_id": 1}').is_failure
        forged = scada.publish(f"{ROOT}/result", '{"frame_id": 999}')
        assert forged is not None and forged.value == 0x87
        deadline = time.monotonic() + 5
        while not scada.messages and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(0.3)
        assert [(t, p) for t, p in scada.messages] == [(f"{ROOT}/result", b'{"frame_id": 1}')]
    finally:
        for c in (edge, scada, operator):
            c.close()


def test_refresh_job_confirms_over_tls(tls_broker: dict[str, Any]) -> None:
    edge = Client(tls_broker, "edge")
    try:
        status = {"state": "online", "model": {"name": "linewatch", "version": 12}, "backend": "tensorrt"}
        assert not edge.publish(f"{ROOT}/status", json.dumps(status), retain=True).is_failure
    finally:
        edge.close()
    cfg = MqttConfig(
        url=f"mqtts://localhost:{tls_broker['port']}",
        topic_root=[ROOT],
        username="refresh",
        password=tls_broker["passwords"]["REFRESH_PASSWORD"],
        ca_file=tls_broker["pki"] / "ca.crt",
        confirm_timeout_s=5,
    )
    result = wait_for_version(cfg, 12, name="linewatch")
    assert result.ok, result.reason
