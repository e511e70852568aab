"""How operator feedback is named on disk: the edge writes these files, the refresh job recognises them.

The operator page (``edge/operator/feedback.py``) files a false alarm as a good image of its task in the
refresh drop folder, and a missed defect under the review folder's ``<task>/test/missed/``. The refresh
job must tell the operator's false alarms apart from other new good images, because its gate proves
that the new model passes exactly those frames (``deploy/refresh/steps.py``). One name, written here.
"""

from __future__ import annotations

import re

MISSED_DEFECT = "missed"  # the defect folder of operator-reported misses in a task's test set
FEEDBACK_NAME = re.compile(
    r"^(?P<camera>[A-Za-z0-9][A-Za-z0-9_.-]{0,63})-f(?P<frame>\d{9,})-v(?P<version>\d+)\.png$"
)


def feedback_name(camera: str, frame_id: int, version: object) -> str:
    """``<camera>-f<frame id, 9 digits>-v<model version>.png``."""
    name = f"{camera}-f{int(frame_id):09d}-v{version}.png"
    if not FEEDBACK_NAME.match(name):
        raise ValueError(f"not a usable feedback file name: {name!r}")
    return name


def is_feedback(name: str) -> bool:
    return FEEDBACK_NAME.match(name) is not None
