"""The error types more than one part raises and catches, each defined once.

A refresh job catches the bundle error the exporter's reader raises; the edge CLI, the trainer CLI
and the refresh CLI all print a config error the same way. With one class per error an ``except``
in one part catches what another part raises (two classes of the same name never do).
"""

from __future__ import annotations

from pathlib import Path


class ConfigError(ValueError):
    """A configuration is invalid; the message names every offending key (and its environment variable)."""


class BundleError(Exception):
    """A bundle failed a check. ``check`` names it; the message says what and where.

    Raised by the edge's reader (``edge.model.bundle.open_bundle``), by the manifest checks in
    ``contract.manifest`` and by the refresh job when a folder is not a bundle it may publish.
    """

    def __init__(self, check: str, message: str, path: Path | str | None = None) -> None:
        self.check = check
        self.path = str(path) if path is not None else None
        where = f"bundle {path}: " if path is not None else ""
        super().__init__(f"{where}{check} check failed: {message}")
