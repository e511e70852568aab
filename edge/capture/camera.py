"""One camera's record: the state its capture thread, the inference and postprocess stages, its MQTT
link, the commands and the metrics share.

Typed, and in one module, because four parties read and write it (runtime, pipeline, commands,
metrics): a field's meaning is looked up here, not inferred from the code that happens to set it.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from linewatch.edge.capture.frame_sources import CameraSource, Frame
from linewatch.edge.capture.queues import BoundedQueue
from linewatch.edge.config import EdgeConfig
from linewatch.edge.handshake import TriggerGate
from linewatch.edge.publish.outbox import FrameIds, Outbox, OutboxError

if TYPE_CHECKING:  # the link imports paho; the record only holds it
    from linewatch.edge.publish.mqtt import MqttLink


@dataclass
class Summary:
    """Accumulates normal frames between summaries (publish mode 'anomalies')."""

    since: float = field(default_factory=time.monotonic)
    frames: int = 0
    anomalies: int = 0
    first_frame_id: int | None = None
    last_frame_id: int | None = None
    max_score: float | None = None

    def add(self, frame_id: int, score: float, anomalous: bool) -> None:
        self.frames += 1
        self.anomalies += int(anomalous)
        self.first_frame_id = frame_id if self.first_frame_id is None else self.first_frame_id
        self.last_frame_id = frame_id
        self.max_score = score if self.max_score is None else max(self.max_score, score)


class Camera:
    """Per-camera state shared by the stages, the MQTT link, the commands and the metrics."""

    def __init__(
        self, name: str, root: str, uri: str, cfg: EdgeConfig, outbox: Outbox, max_frames: int | None
    ) -> None:
        self.name, self.root, self.uri = name, root, uri
        self.cfg = cfg
        self.threshold = cfg.publish.threshold
        self.ids = FrameIds(outbox, name)
        self.max_frames = max_frames
        self.results = 0
        self.anomalies = 0
        self.summary = Summary()
        self.latest: tuple[Frame, np.ndarray | None, int] | None = None  # for the snapshot command
        self.marks: dict[int, tuple[float, float]] = {}  # outbox row -> (t_captured, t_written)
        self.link: MqttLink | None = None  # attached by the runtime
        # triggered mode ([trigger] cameras): only the frame a trigger takes is scored
        self.gate = TriggerGate(name, cfg.trigger.timeout_s) if name in cfg.trigger.cameras else None
        self.done = threading.Event()  # max_frames reached
        self.source = CameraSource(
            name, uri, cfg.camera, self._accept, resume_after=outbox.source_mark(name, uri)
        )
        policy = cfg.queues.offline_policy if self.source.spec.offline else cfg.queues.policy
        self.queue: BoundedQueue[Frame] = BoundedQueue(cfg.queues.frames, policy)

    def topic(self, leaf: str) -> str:
        return f"{self.root}/{leaf}"

    def _accept(self, frame: Frame) -> None:
        """Capture-thread sink: number the frame, then queue it under the camera's full policy."""
        if self.gate is not None and not self.gate.admit(frame):
            return  # no trigger pending: counted by the gate, shown on the handshake topic
        try:
            frame.frame_id = self.ids.next()
        except OutboxError:  # no id can be reserved durably (disk full): drop the frame, counted there
            return
        self.queue.put(frame)

    def attach_signal(self, signal: threading.Event) -> None:
        self.queue._signal = signal
