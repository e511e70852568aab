"""Operator feedback that feeds the refresh: false alarms become good images, misses go to review.

- "false alarm: part is good": the frame, full resolution and unscored (no overlay), is written as a
  lossless PNG to ``<drop_dir>/<task>/train/good/``, the layout the refresh job takes for a known task
  (``deploy/refresh/drop.py``). ``<task>`` is the task whose slot scored it, so the next
  ``linewatch-refresh run`` learns it as good material of that task.
- "missed: part is bad": the frame goes to ``<review_dir>/<task>/test/missed/``; the refresh job moves
  those into the dataset's test set, so its gate measures the model on them (``drop.scan_review``).

Files are written under a hidden name and renamed, so the refresh job never takes half a file. Names
are built only from the camera, frame id and model version, never from request text, and every path is
checked to stay inside its folder. Each action is appended to the audit log (JSON lines, flushed).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Literal

import cv2

from linewatch.contract.feedback import MISSED_DEFECT, feedback_name
from linewatch.edge.operator.live import Shown

Kind = Literal["false_alarm", "missed"]
KINDS: tuple[Kind, ...] = ("false_alarm", "missed")
_TASK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # as deploy/refresh/drop.py accepts


class FeedbackError(Exception):
    """Feedback that cannot be taken; the message is safe to show on the page."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class FeedbackWriter:
    """Writes judged frames into the refresh folders and appends every action to the audit log."""

    def __init__(self, drop_dir: Path | None, review_dir: Path | None, audit_log: Path) -> None:
        self.drop_dir, self.review_dir, self.audit_log = drop_dir, review_dir, audit_log
        self._lock = threading.Lock()

    def folder(self, kind: Kind) -> Path | None:
        return self.drop_dir if kind == "false_alarm" else self.review_dir

    def write(self, kind: Kind, shown: Shown) -> str:
        """Store the frame; returns its path relative to its folder (what the page may show)."""
        root = self.folder(kind)
        if root is None:
            key = "drop_dir" if kind == "false_alarm" else "review_dir"
            raise FeedbackError(f"operator.{key} is not configured on this edge", 409)
        task = shown.task
        if task is None or not _TASK.match(task):
            raise FeedbackError("the model gave no known task for this frame; it cannot be filed", 409)
        leaf = Path(task, "train", "good") if kind == "false_alarm" else Path(task, "test", MISSED_DEFECT)
        name = feedback_name(shown.camera, shown.frame_id, shown.model.get("version"))
        root = root.resolve()
        folder = (root / leaf).resolve()
        if root not in folder.parents:
            raise FeedbackError("refusing a path outside the feedback folder", 400)
        folder.mkdir(parents=True, exist_ok=True)
        dest = folder / name
        if dest.exists():
            raise FeedbackError(f"frame {shown.frame_id} of {shown.camera} was already filed", 409)
        tmp = folder / f".{name}.tmp.png"
        if not cv2.imwrite(str(tmp), shown.image):
            raise FeedbackError("the frame could not be written", 500)
        os.replace(tmp, dest)
        return str(dest.relative_to(root))

    def audit(self, entry: dict[str, Any]) -> None:
        """Append one action (accepted or refused) to the audit log."""
        line = json.dumps({"ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **entry})
        with self._lock:
            self.audit_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.audit_log, "a", encoding="utf-8") as fh:
                fh.write(line + "\n")
                fh.flush()
                os.fsync(fh.fileno())
