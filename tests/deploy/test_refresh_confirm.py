"""Confirmation over MQTT against a real mosquitto: the edge's retained status decides."""

from __future__ import annotations

import threading
import time

from refresh_testkit import publish_status

from linewatch.deploy.refresh.config import MqttConfig
from linewatch.deploy.refresh.confirm import read_status, wait_for_version


def _cfg(port: int, *roots: str, timeout: float = 5.0) -> MqttConfig:
    return MqttConfig(url=f"mqtt://127.0.0.1:{port}", topic_root=list(roots), confirm_timeout_s=timeout)


def test_confirms_when_retained_status_has_the_new_version(broker_port: int) -> None:
    root = "linewatch/t1/line/st/cam0"
    publish_status(broker_port, root, 7)
    result = wait_for_version(_cfg(broker_port, root), 7, name="linewatch")
    assert result.ok, result.reason
    assert result.statuses[root]["model"]["version"] == 7
    assert result.elapsed_s < 4


def test_times_out_while_the_edge_reports_the_old_version(broker_port: int) -> None:
    root = "linewatch/t2/line/st/cam0"
    publish_status(broker_port, root, 6)
    start = time.monotonic()
    result = wait_for_version(_cfg(broker_port, root, timeout=1.5), 7)
    assert not result.ok
    assert 1.4 <= time.monotonic() - start < 5
    assert "version 7" in result.reason and "'version': 6" in result.reason


def test_confirms_a_status_that_arrives_later(broker_port: int) -> None:
    root = "linewatch/t3/line/st/cam0"
    publish_status(broker_port, root, 2)
    timer = threading.Timer(0.8, publish_status, args=(broker_port, root, 3))
    timer.start()
    try:
        result = wait_for_version(_cfg(broker_port, root), 3)
    finally:
        timer.join()
    assert result.ok, result.reason
    assert result.elapsed_s >= 0.7


def test_offline_or_other_model_name_does_not_confirm(broker_port: int) -> None:
    root = "linewatch/t4/line/st/cam0"
    publish_status(broker_port, root, 9, state="offline")
    assert not wait_for_version(_cfg(broker_port, root, timeout=1.0), 9).ok
    publish_status(broker_port, root, 9, name="othermodel")
    assert not wait_for_version(_cfg(broker_port, root, timeout=1.0), 9, name="linewatch").ok
    assert wait_for_version(_cfg(broker_port, root, timeout=2.0), 9).ok  # name not checked when not given


def test_every_camera_root_must_confirm(broker_port: int) -> None:
    roots = ["linewatch/t5/line/st/cam0", "linewatch/t5/line/st/cam1"]
    publish_status(broker_port, roots[0], 4)
    publish_status(broker_port, roots[1], 3)
    result = wait_for_version(_cfg(broker_port, *roots, timeout=1.0), 4)
    assert not result.ok and roots[1] in result.reason and roots[0] not in result.reason
    publish_status(broker_port, roots[1], 4)
    assert wait_for_version(_cfg(broker_port, *roots), 4).ok
    assert set(read_status(_cfg(broker_port, *roots))) == set(roots)


def test_unreachable_broker_times_out_with_a_clear_reason() -> None:
    from linewatch.deploy.localbroker import free_port

    result = wait_for_version(_cfg(free_port(), "linewatch/x/y/z/w", timeout=1.0), 1)
    assert not result.ok
    assert "broker" in result.reason
