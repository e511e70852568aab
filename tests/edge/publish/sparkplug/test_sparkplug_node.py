"""The node's numbering and report by exception, decoded with the independent schema (spb_host.py)."""

from __future__ import annotations

import pytest
from spb_host import payload_class

from linewatch.edge.publish.sparkplug.metrics import DEVICE_METRICS, NODE_METRICS
from linewatch.edge.publish.sparkplug.node import SparkplugNode

FRAME = {"Inspection/Frame ID": 0, "Inspection/Score": 0.1, "Inspection/Anomalous": False}


def decode(raw: bytes):
    return payload_class().FromString(raw)


def test_seq_wraps_255_to_0_and_births_restart_at_0() -> None:
    node = SparkplugNode("g", "n", ["cam0"])
    births = node.births()
    assert [decode(p).seq for _, p in births] == [0, 1]
    raw = node.frame_data("cam0", 1.0, FRAME)
    seqs = [decode(node.stamp(raw, historical=False)).seq for _ in range(300)]
    assert seqs[:3] == [2, 3, 4] and seqs[253] == 255 and seqs[254] == 0 and seqs[255] == 1
    assert decode(node.births()[0][1]).seq == 0


def test_bdseq_counts_connects_and_wraps() -> None:
    node = SparkplugNode("g", "n", ["cam0"])
    values = [node.next_bdseq() for _ in range(257)]
    assert values[:2] == [0, 1] and values[255] == 255 and values[256] == 0
    death = decode(node.ndeath())
    assert not death.HasField("seq") and [m.name for m in death.metrics] == ["bdSeq"]
    assert death.metrics[0].long_value == 0


def test_report_by_exception_and_historical_flag() -> None:
    node = SparkplugNode("g", "n", ["cam0"])
    node.births()
    first = decode(node.frame_data("cam0", 1.0, FRAME))
    second = decode(
        node.frame_data("cam0", 2.0, {**FRAME, "Inspection/Frame ID": 1, "Inspection/Score": 0.2})
    )
    assert len(first.metrics) == 3 and len(second.metrics) == 2  # Anomalous unchanged: left out
    assert all(not m.name and m.alias for m in second.metrics)  # by alias after the birth
    assert second.timestamp == 2000
    replayed = decode(node.stamp(second.SerializeToString(), historical=True))
    assert all(m.is_historical for m in replayed.metrics)
    node.set_state("cam0", {"Inspection/Threshold": 0.4})
    assert len(decode(node.changed_state("cam0")).metrics) == 1
    assert node.changed_state("cam0") is None  # told once


def test_catalogue_names_are_unique() -> None:
    for metrics in (NODE_METRICS, DEVICE_METRICS):
        names = [m.name for m in metrics]
        assert len(names) == len(set(names))


@pytest.mark.parametrize("bad", ["a/b", "a+b", "a#", "", "a b"])
def test_sparkplug_ids_reject_topic_characters(bad: str) -> None:
    from linewatch.contract.errors import ConfigError
    from linewatch.edge.config import load_config

    with pytest.raises(ConfigError):
        load_config(None, {"sparkplug": {"edge_node_id": bad}})


def test_readme_lists_every_metric() -> None:
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[4] / "README.md").read_text()
    missing = [m.name for m in (*NODE_METRICS, *DEVICE_METRICS) if f"`{m.name}`" not in readme]
    assert not missing, f"README's Sparkplug table lacks {missing}"
