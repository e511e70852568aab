"""The graph I/O names: one spelling, used by the exporter's graph and by the edge's backends."""

from __future__ import annotations

from pathlib import Path

from linewatch.contract import graph_io

REPO = Path(__file__).resolve().parents[2]


def test_outputs_in_order_with_types_and_shapes() -> None:
    assert graph_io.OUTPUT_NAMES == ("anomaly_map", "score", "task")
    assert list(graph_io.OUTPUT_DTYPES) == list(graph_io.OUTPUT_NAMES)
    assert graph_io.output_shapes((64, 96)) == {
        "anomaly_map": ["batch", 64, 96],
        "score": ["batch"],
        "task": ["batch"],
    }
    assert {"frames", "anomaly_map", "score", "task"} == graph_io.RESERVED_NAMES


def test_no_product_module_spells_a_graph_tensor_name_itself() -> None:
    """The names live in contract/graph_io.py; a quoted copy elsewhere is how they drifted before."""
    spelled = ['"anomaly_map"', "'anomaly_map'"]
    offenders = [
        str(path.relative_to(REPO))
        for part in ("edge", "export", "contract", "deploy")
        for path in (REPO / part).rglob("*.py")
        if path.name != "graph_io.py" and any(s in path.read_text() for s in spelled)
    ]
    assert offenders == []
