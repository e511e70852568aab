"""Chaos: the broker SIGKILLed three times and the edge SIGKILLed twice, in one run, mid-stream.

Real processes only: mosquitto with persistence (killed, not stopped: it saves nothing at exit), the
edge CLI (killed: no drain, no offline status), a persistent-session QoS 1 subscriber in the test,
and a line camera writing PNGs into a dir: source all along. The broker is killed only after it saved
the subscriber's session (``broker_saved``: what mosquitto had not saved is the broker's loss, not the
edge's). What must hold, after deduplicating on
(camera, frame_id) as the contract tells subscribers to: every image has a verdict (0 lost), each
image exactly one frame id (0 duplicated, no re-scoring after a restart), no frame id given to two
images (none reused), verdicts in order. Copies of one frame id are QoS 1 redeliveries; each must
straddle a crash (it was in flight then); the test prints them.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from chaoskit import SITE, broker_saved, by_id, kill_broker, line_and_edge, unscored, verdicts
from edge_testkit import wait_for


def indexed_results(rec: Any) -> list[tuple[int, dict[str, Any]]]:
    """(position in everything the subscriber received, result) for every result message."""
    out = []
    for k, (topic, payload, _) in enumerate(list(rec.messages)):
        if topic.endswith("/result"):
            out.append((k, json.loads(payload)))
    return out


def test_broker_killed_three_times_and_edge_twice_nothing_lost(
    mqtt_broker: Any, mqtt_recorder: Any, tmp_path: Path
) -> None:
    t_start = time.monotonic()
    rec = mqtt_recorder([f"{SITE}/+/result"])
    line, edge = line_and_edge(tmp_path, mqtt_broker.url)
    crashes: list[int] = []  # how many messages the subscriber had when each crash happened

    edge.start()
    try:
        line.produce(10)
        wait_for(lambda: not unscored(line, rec), 120, what="the first verdicts")
        for what in ("broker", "edge", "broker", "edge", "broker"):
            if what == "broker":
                broker_saved(mqtt_broker, rec)
            before = len(by_id(verdicts(rec)))
            burst = threading.Thread(target=line.produce, args=(12, 0.02))
            burst.start()  # the camera keeps writing through the crash
            wait_for(lambda b=before: len(by_id(verdicts(rec))) >= b + 2, 60, what="the burst under way")
            crashes.append(len(rec.messages))  # some frames delivered, some in flight, some not yet read
            if what == "broker":
                kill_broker(mqtt_broker)
                burst.join(60)
                line.produce(4)  # scored while the broker is gone: they wait in the outbox
                mqtt_broker.start()
            else:
                edge.kill()
                burst.join(60)
                line.produce(4)  # written while the edge is down: read after its restart
                edge.start()
            wait_for(
                lambda: not unscored(line, rec),
                180,
                what=f"every verdict after the {what} kill ({unscored(line, rec)})",
            )
        wait_for(lambda: edge.prom().get("linewatch_edge_outbox_depth") == 0, 60, what="the outbox drained")
    finally:
        assert edge.stop() == 0, edge.tail()

    docs = indexed_results(rec)
    results = [d for _, d in docs]
    files: dict[str, set[int]] = {}
    for d in results:
        files.setdefault(d["source"]["file"], set()).add(d["frame_id"])
    assert sorted(files) == line.names()  # 0 lost
    rescored = {f: sorted(ids) for f, ids in files.items() if len(ids) > 1}
    assert not rescored, f"images scored twice under new ids after a restart: {rescored}"
    first = by_id(results)
    assert all(first[d["frame_id"]]["source"]["file"] == d["source"]["file"] for d in results)  # no reuse
    order = list(dict.fromkeys(d["frame_id"] for d in results))
    assert order == sorted(order), "verdicts out of order"
    assert [first[i]["source"]["file"] for i in order] == line.names()
    assert all(first[i]["anomalous"] == line.defect(int(first[i]["source"]["file"][:6])) for i in order)
    runs = Counter(i // 1000 for i in order)  # FrameIds reserves blocks of 1000: one block per edge run
    assert len(runs) == 3, runs

    copies = Counter(d["frame_id"] for d in results)
    dups = sorted(i for i, n in copies.items() if n > 1)
    for i in dups:
        where = [k for k, d in docs if d["frame_id"] == i]
        assert any(where[0] < c <= where[-1] for c in crashes), f"frame {i} duplicated away from any crash"
    print(
        f"\nchaos crashes: {line.n} images, {len(order)} verdicts after dedup, 0 lost; broker SIGKILL x3, "
        f"edge SIGKILL x{edge.kills}; QoS1 duplicates (in flight at a crash): {len(dups)} {dups}; "
        f"frame-id blocks {dict(runs)}; {time.monotonic() - t_start:.1f} s"
    )
