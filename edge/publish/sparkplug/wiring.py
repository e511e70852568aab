"""Sparkplug B mode plugged into the runtime: one node, one link, the cameras as devices.

What the runtime asks of a payload mode is small: encode a verdict into outbox rows (the frame path
calls ``result_rows``), say where a delivered row's latency mark is, route commands, and refresh the
state metrics. Everything Sparkplug-specific stays in this package; the runtime only chooses.
"""

from __future__ import annotations

import re
import socket
from typing import TYPE_CHECKING, Any

from linewatch.edge.publish.sparkplug.commands import DeviceCommands
from linewatch.edge.publish.sparkplug.link import SparkplugLink
from linewatch.edge.publish.sparkplug.node import SparkplugNode

if TYPE_CHECKING:
    from linewatch.edge.capture.camera import Camera
    from linewatch.edge.capture.frame_sources import Frame
    from linewatch.edge.runtime import EdgeRuntime


def default_edge_node_id() -> str:
    """The host name, reduced to what a Sparkplug id may hold (no / + # and no spaces)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", socket.gethostname()) or "linewatch"


class SparkplugEdge:
    """Builds the node and its link for a runtime, and keeps the node's state metrics current."""

    def __init__(self, runtime: EdgeRuntime) -> None:
        cfg = runtime.cfg.sparkplug
        self.runtime = runtime
        self.heatmap = cfg.heatmap
        self.node = SparkplugNode(
            cfg.group_id,
            cfg.edge_node_id or default_edge_node_id(),
            [c.name for c in runtime.cameras],
            qos=cfg.qos,
        )
        self.link: SparkplugLink | None = None
        self.commands: DeviceCommands | None = None

    def start(self) -> SparkplugLink:
        rt = self.runtime
        self.link = SparkplugLink(
            rt.cfg.mqtt,
            self.node,
            rt.outbox,
            on_dcmd=self._dcmd,
            refresh=self.refresh,
            rebirth_min_interval_s=rt.cfg.sparkplug.rebirth_min_interval_s,
            on_delivered=self._delivered,
        )
        self.commands = DeviceCommands(rt.commands, self.node, self.link)
        for cam in rt.cameras:
            cam.link = self.link  # wake(), publish_status(), stats: one link serves every camera
        self.link.start()
        return self.link

    # ----- frame path ---------------------------------------------------------------------------
    def result_rows(
        self, cam: Camera, frame: Frame, body: dict[str, Any], heatmap: bytes | None
    ) -> list[tuple[str, bytes, int]]:
        values: dict[str, Any] = {
            "Inspection/Frame ID": body["frame_id"],
            "Inspection/Score": body["score"],
            "Inspection/Anomalous": body["anomalous"],
            "Inspection/Regions": len(body["regions"]),
            "Inspection/Task": body["task_name"] or str(body["task"]),
        }
        if heatmap is not None and self.heatmap:
            values["Inspection/Heatmap"] = heatmap
        raw = self.node.frame_data(cam.name, frame.captured_at, values)
        return [(self.node.topic("DDATA", cam.name), raw, self.node.qos)]

    # ----- link callbacks --------------------------------------------------------------------------
    def _dcmd(self, device: str, raw: bytes) -> None:
        cam = self.runtime.by_name.get(device)
        if cam is None or self.commands is None:
            return  # parse_dcmd would refuse it too; a DCMD to no camera has nobody to report to
        self.commands.handle(cam, raw)

    def _delivered(self, row_id: int) -> None:
        for cam in self.runtime.cameras:
            if row_id in cam.marks:
                self.runtime._delivered(cam, row_id)
                return

    def refresh(self) -> None:
        """Copy the runtime's numbers into the node's state metrics (the link sends what changed)."""
        rt, node, link = self.runtime, self.node, self.link
        box = rt.outbox
        node.set_state(
            None,
            {
                "Outbox/Depth": box.depth(),
                "Outbox/Dropped": box.dropped,
                "Outbox/Not Stored": box.not_stored,
                "Rebirth/Requests": link.rebirth_requests if link else 0,
                "Rebirth/Coalesced": link.rebirths_coalesced if link else 0,
            },
        )
        model = rt.models.loaded
        for cam in rt.cameras:
            e2e = rt.telemetry.camera(cam.name).stages["end_to_end"].percentiles()
            node.set_state(
                cam.name,
                {
                    "Inspection/Threshold": cam.threshold,
                    "Counters/Frames": cam.results,
                    "Counters/Anomalies": cam.anomalies,
                    "Counters/Dropped Frames": cam.queue.dropped,
                    "Model/Name": model.name if model else None,
                    "Model/Version": model.version if model else None,
                    "Model/Backend": model.backend_name if model else None,
                    "Model/Error": rt.models.last_error or "",
                    "Latency/p50 ms": e2e["p50"],
                    "Latency/p99 ms": e2e["p99"],
                    **handshake_state(cam),
                },
            )


def handshake_state(cam: Camera) -> dict[str, Any]:
    """A triggered camera's handshake as metrics (nothing for a free-running one: they stay null)."""
    if cam.gate is None:
        return {}
    snap = cam.gate.snapshot()
    held, counters = snap["result"] or {}, snap["counters"]
    return {
        "Handshake/State": snap["state"],
        "Handshake/Results Ready": snap["results_ready"],
        "Handshake/OK": held.get("ok"),
        "Handshake/Regions": held.get("regions"),
        "Handshake/Trigger ID": snap["trigger_id"],
        "Handshake/Missed": counters["missed"],
        "Handshake/Untriggered": counters["untriggered"],
        "Handshake/Refused": counters["refused"],
    }
