"""Chaos: a long broker outage, time-compressed; log volume and CPU while the broker is away.

The outage lasts OUTAGE_S with ``[logging] repeat_every_s`` = 5 instead of 60 and
``reconnect_max_s`` = 2 instead of 30: twelve times compressed, so 25 s here stand for five minutes
at the defaults. The bars, from issue 17: at most 20 log lines about the outage (issue 17 measured
3,000 a second), CPU during the outage within 5 % of one core of the idle edge, a bounded outbox that
drops its oldest rows and says so (Prometheus, the metrics topic, the retained status), and after
reconnect the kept rows delivered in order.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from chaoskit import SITE, broker_saved, kill_broker, line_and_edge, verdicts
from edge_testkit import wait_for

OUTAGE_S = 25.0
MAX_ROWS = 20


def test_long_outage_bounded_outbox_quiet_logs_idle_cpu(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    rec = mqtt_recorder([f"{SITE}/+/result", f"{SITE}/+/status", f"{SITE}/+/metrics"])
    line, edge = line_and_edge(
        tmp_path,
        mqtt_broker.url,
        defect=lambda i: False,  # all good: one outbox row per frame
        mqtt={"reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
        outbox={"max_rows": MAX_ROWS},
        logging={"repeat_every_s": 5},
    )
    edge.start()
    try:
        line.produce(10)
        wait_for(lambda: len(verdicts(rec)) >= 10, 120, what="verdicts before the outage")
        idle_cpu = edge.cpu_share(6)  # broker up, nothing to score
        broker_saved(mqtt_broker, rec)
        t_down = time.time()
        kill_broker(mqtt_broker)
        line.produce(40)  # 40 verdicts for a 20-row outbox: the 20 oldest are dropped, counted
        wait_for(
            lambda: edge.metric("linewatch_edge_frames_total") >= 50, 120, what="the outage's frames scored"
        )
        wait_for(lambda: edge.metric("linewatch_edge_outbox_dropped") >= 20, 60, what="the drops counted")
        outage_cpu = []
        while time.time() - t_down < OUTAGE_S:
            outage_cpu.append(edge.cpu_share(5))
        failures = edge.metric("linewatch_edge_mqtt_connect_failures")
        t_up = time.time()
        mqtt_broker.start()
        wait_for(lambda: len(verdicts(rec)) >= 10 + MAX_ROWS, 120, what="the kept verdicts")
        wait_for(lambda: edge.metric("linewatch_edge_outbox_depth") == 0, 60, what="the outbox drained")
        wait_for(lambda: "outbox" in rec.json("line1/status")[-1], 60, what="the status to report the drops")
        wait_for(lambda: rec.json("line1/metrics")[-1]["drops"]["outbox"] >= 20, 60, what="metrics after it")
        dropped = int(edge.metric("linewatch_edge_outbox_dropped"))
        status = rec.json("line1/status")[-1]
    finally:
        assert edge.stop() == 0, edge.tail()

    files = [d["source"]["file"] for d in verdicts(rec)]
    kept = line.names()[:10] + line.names()[-MAX_ROWS:]
    assert list(dict.fromkeys(files)) == kept  # the newest rows, in order
    assert dropped == line.n - len(kept) == 20  # every frame is delivered or counted as dropped
    assert status["state"] == "online" and status["outbox"] == {
        "dropped": 20,
        "not_stored": 0,
        "disk_full": False,
    }

    during = edge.lines_between(t_down - 0.01, t_up)  # log ts are truncated to the millisecond
    about_broker = [r for r in during if "broker" in r["msg"] or r["logger"].startswith("paho")]
    print(
        f"\nchaos outage: {t_up - t_down:.1f} s down, {int(failures)} connect attempts failed, "
        f"{len(during)} log lines during it ({len(about_broker)} about the broker): "
        + "; ".join(r["msg"] for r in during)
        + f"\nCPU: idle {idle_cpu * 100:.2f} %, during the outage {[round(c * 100, 2) for c in outage_cpu]} % "
        f"of one core; outbox dropped {dropped} (max_rows {MAX_ROWS})"
    )
    assert failures >= 5  # it kept trying all along (each counted)...
    assert len(during) <= 20  # ...but said so in a few lines
    assert max(outage_cpu) - idle_cpu < 0.05
