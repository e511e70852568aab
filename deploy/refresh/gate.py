"""The release gate: may the refreshed model replace the live one?

A pure function over two evaluations, so it can be tested exhaustively and so the
refresh log can record exactly why a model was refused. Continual learning can
quietly forget; this is where forgetting stops a release.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["GateCheck", "GateDecision", "decide", "read_eval"]

# Float noise in metrics.json must not turn "dropped exactly the margin" into a refusal.
_EPS = 1e-9


@dataclass(frozen=True)
class GateCheck:
    """One rule applied to one task; `ok` False means it blocks the release."""

    task: str
    kind: str  # "earlier" (must not drop) or "new" (must reach the floor)
    before: float | None
    after: float | None
    limit: float
    ok: bool
    message: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        """Why the release was refused (empty when it passed)."""
        return [c.message for c in self.checks if not c.ok]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "metric": self.metric,
            "reasons": self.reasons,
            "checks": [asdict(c) for c in self.checks],
        }


def _valid(value: float | None) -> bool:
    return value is not None and isinstance(value, (int, float)) and not math.isnan(value)


def decide(
    before: Mapping[str, float | None],
    after: Mapping[str, float | None],
    new_tasks: Sequence[str],
    *,
    metric: str = "image_auroc",
    max_drop: float = 0.02,
    new_task_floor: float = 0.90,
    max_drop_by_task: Mapping[str, float] | None = None,
) -> GateDecision:
    """Apply the gate.

    - every task in `before` that is not new is an *earlier* task: its value after
      the update may be at most its margin below its value before;
    - every task in `new_tasks` must reach `new_task_floor` after the update;
    - a task that cannot be measured (missing, null or NaN) after the update is a
      refusal, never a pass: an unmeasured model is not a good model. A task that
      had no valid value *before* is judged against the floor instead.
    """
    overrides = dict(max_drop_by_task or {})
    new = list(dict.fromkeys(new_tasks))
    checks: list[GateCheck] = []
    for task in before:
        if task in new:
            continue
        old, now = before[task], after.get(task)
        margin = overrides.get(task, max_drop)
        if not _valid(now):
            checks.append(
                GateCheck(task, "earlier", old, None, margin, False, f"{task}: no {metric} after the update")
            )
            continue
        assert now is not None
        if not _valid(old):
            ok = now + _EPS >= new_task_floor
            verdict = "meets" if ok else "misses"
            msg = f"{task}: no {metric} before; {now:.4f} after {verdict} the floor {new_task_floor:.4f}"
            checks.append(GateCheck(task, "earlier", None, now, new_task_floor, ok, msg))
            continue
        assert old is not None
        drop = old - now
        ok = drop <= margin + _EPS
        msg = f"{task}: {metric} {old:.4f} -> {now:.4f} (drop {drop:+.4f}, allowed {margin:.4f})"
        checks.append(GateCheck(task, "earlier", old, now, margin, ok, msg))
    for task in new:
        now = after.get(task)
        if not _valid(now):
            msg = f"{task}: new task has no {metric} after the update"
            checks.append(GateCheck(task, "new", None, None, new_task_floor, False, msg))
            continue
        assert now is not None
        ok = now + _EPS >= new_task_floor
        verdict = "reaches" if ok else "misses"
        msg = f"{task}: new task {metric} {now:.4f} {verdict} the floor {new_task_floor:.4f}"
        checks.append(GateCheck(task, "new", None, now, new_task_floor, ok, msg))
    return GateDecision(all(c.ok for c in checks), metric, checks)


def read_eval(path: Path, metric: str = "image_auroc") -> dict[str, float | None]:
    """Per-task values from a metrics.json-shaped file: the last row of matrix[metric].

    That row is "after training through the last task", i.e. the model as it would
    ship. Raises ValueError with the file name when the shape is not as agreed.
    """
    doc = json.loads(Path(path).read_text())
    try:
        tasks = list(doc["tasks"])
        rows = doc["matrix"][metric]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"{path}: expected keys tasks and matrix.{metric} ({exc})") from None
    if not rows:
        raise ValueError(f"{path}: matrix.{metric} is empty")
    last = list(rows[-1])
    if len(last) != len(tasks):
        raise ValueError(f"{path}: last row of matrix.{metric} has {len(last)} values for {len(tasks)} tasks")
    return {task: (None if v is None else float(v)) for task, v in zip(tasks, last, strict=True)}
