"""Chaos: a network black hole between the edge and the broker (packets dropped, not refused).

A TCP proxy in the test stops forwarding without closing either side, as a pulled cable behind a
switch or a stateful firewall that forgot the flow would: no RST, no FIN, the socket stays open and
silent. The edge must notice through the MQTT keepalive within two keepalive intervals (it gives up
1.5 keepalives after the last packet from the broker), keep scoring into the outbox, reconnect
through the proxy once it forwards again, and lose nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from chaoskit import SITE, BlackHoleProxy, by_id, line_and_edge, parse_ts, unscored, verdicts
from edge_testkit import wait_for

KEEPALIVE_S = 5  # the config's minimum; detection takes 1.5x this


def test_black_hole_detected_by_keepalive_and_nothing_lost(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{SITE}/+/result"])
    proxy = BlackHoleProxy(mqtt_broker.port)
    line, edge = line_and_edge(tmp_path, proxy.url, mqtt={"keepalive_s": KEEPALIVE_S, "connect_timeout_s": 2})

    edge.start()
    try:
        line.produce(10)
        wait_for(lambda: not unscored(line, rec), 120, what="verdicts through the proxy")
        assert proxy.connections == 1
        t_hole = proxy.black_hole()
        line.produce(10, every_s=0.2)  # the line goes on during the hole

        def lost() -> list[dict[str, Any]]:
            return [
                r
                for r in edge.log()
                if r.get("msg", "").startswith("broker connection lost") and parse_ts(r["ts"]) >= t_hole
            ]

        wait_for(lambda: bool(lost()), 4 * KEEPALIVE_S + 30, what="the edge to notice the black hole")
        detected_s = parse_ts(lost()[0]["ts"]) - t_hole
        assert "no packet from the broker" in lost()[0].get("reason", ""), lost()[0]
        wait_for(
            lambda: edge.prom().get("linewatch_edge_outbox_depth", 0) >= 1, 60, what="rows kept in the outbox"
        )
        assert edge.health()["inference_alive"] and edge.health()["postprocess_alive"]
        proxy.heal()
        line.produce(5)
        wait_for(
            lambda: not unscored(line, rec), 120, what=f"every verdict after the hole ({unscored(line, rec)})"
        )
        wait_for(lambda: edge.prom().get("linewatch_edge_outbox_depth") == 0, 60, what="the outbox drained")
        keepalive_timeouts = edge.metric("linewatch_edge_mqtt_disconnects")
    finally:
        assert edge.stop() == 0, edge.tail()
        proxy.close()

    docs = verdicts(rec)
    order = list(dict.fromkeys(d["frame_id"] for d in docs))
    assert order == sorted(order) and len(order) == line.n  # 0 lost, in order, one id per image
    assert [by_id(docs)[i]["source"]["file"] for i in order] == line.names()
    assert proxy.connections >= 2  # reconnected through the proxy once it forwarded again
    assert keepalive_timeouts >= 1
    print(
        f"\nchaos black hole: detected after {detected_s:.1f} s (keepalive {KEEPALIVE_S} s, bound "
        f"{2 * KEEPALIVE_S} s); {line.n} images, 0 lost; proxy connections {proxy.connections}; "
        f"duplicates {len(docs) - len(order)}"
    )
    assert detected_s <= 2 * KEEPALIVE_S
