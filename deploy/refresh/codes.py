"""Exit codes of `linewatch-refresh`, one per way a run can end.

Distinct codes let systemd (`SuccessExitStatus=`), a monitoring check or a shell
script tell "nothing to do" from "refused by the gate" from "rolled back" without
parsing text. The outcome names are what the refresh log records.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Exit"]


class Exit(IntEnum):
    OK = 0  # published and confirmed, rolled back on request, or nothing to do
    FAILED = 1  # a step failed (trainer, eval, export, verify, publish); the old model stays live
    CONFIG = 2  # bad command line or configuration; nothing was done
    REFUSED = 3  # the gate refused the new model; the old model stays live
    ROLLED_BACK = 4  # published, not confirmed by the edge, rolled back to the previous version
    ROLLBACK_FAILED = 5  # ... and the rollback could not be confirmed either: needs a person
    LOCKED = 75  # another refresh holds the lock (EX_TEMPFAIL: try again later)

    @property
    def outcome(self) -> str:
        return {
            Exit.OK: "ok",
            Exit.FAILED: "failed",
            Exit.CONFIG: "config-error",
            Exit.REFUSED: "refused",
            Exit.ROLLED_BACK: "rolled-back",
            Exit.ROLLBACK_FAILED: "rollback-failed",
            Exit.LOCKED: "locked",
        }[self]
