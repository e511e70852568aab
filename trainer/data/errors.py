"""The one error type of the dataset layer.

Callers (the CLI, the trainer) catch a single type and show its message; the message always names
the offending file(s) so that a user can fix the dataset without a debugger.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class DatasetError(ValueError):
    """A dataset is missing, malformed or holds unreadable files. ``paths`` lists every bad file."""

    def __init__(self, message: str, paths: Iterable[Path | str] = ()) -> None:
        self.paths: list[Path] = [Path(p) for p in paths]
        super().__init__(message)


def bad_files_error(what: str, problems: list[tuple[Path, str]], limit: int = 50) -> DatasetError:
    """Build ONE error that lists every bad file, so a user fixes them all in one pass."""
    lines = [f"  {path}: {why}" for path, why in problems[:limit]]
    if len(problems) > limit:
        lines.append(f"  ... and {len(problems) - limit} more")
    message = f"{len(problems)} {what}:\n" + "\n".join(lines)
    return DatasetError(message, [path for path, _ in problems])
