"""Rollback: point `current` back at an earlier published bundle, then confirm.

Bundles are immutable and kept (see `Store.prune`), so a rollback is one atomic
symlink swap; the edge reloads on the change like for any publish. Used by hand
(`linewatch-refresh rollback`) and automatically when the edge does not confirm a
freshly published version.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from linewatch.deploy.refresh.config import RefreshConfig
from linewatch.deploy.refresh.confirm import ConfirmResult, wait_for_version
from linewatch.deploy.refresh.publish import Published, Store, StoreError, parse_dirname

__all__ = ["RollbackResult", "choose_target", "rollback_to"]


@dataclass
class RollbackResult:
    from_dirname: str | None
    to: Published
    confirm: ConfirmResult | None  # None: confirmation not configured or not asked for

    @property
    def ok(self) -> bool:
        return self.confirm is None or self.confirm.ok

    def to_json(self) -> dict[str, Any]:
        return {
            "from": self.from_dirname,
            "to": self.to.dirname,
            "to_version": self.to.version,
            "confirm": self.confirm.to_json() if self.confirm else None,
        }


def choose_target(store: Store, to_version: int | None = None) -> Published:
    """The bundle a rollback goes to: the given version, else the one below `current`."""
    current = store.current()
    if to_version is not None:
        for item in store.published():
            if item.version == to_version:
                if item.dirname == current:
                    raise StoreError(f"version {to_version} is already current")
                return item
        raise StoreError(f"{store.description}: no published bundle with version {to_version}")
    if current is None:
        raise StoreError(f"{store.description}: nothing is current; nothing to roll back")
    target = store.previous_of(current)
    if target is None:
        raise StoreError(f"{store.description}: no version older than {current} to roll back to")
    return target


def rollback_to(
    cfg: RefreshConfig,
    store: Store,
    target: Published | str,
    *,
    confirm: bool = True,
    say: Callable[[str], None] = print,
) -> RollbackResult:
    """Repoint `current` at `target` and (when MQTT is configured) wait for the edge to report it."""
    if isinstance(target, str):
        parsed = parse_dirname(target)
        if parsed is None:
            raise StoreError(f"{target!r} is not a bundle directory name")
        target = parsed
    before = store.current()
    say(f"==> rollback: current {before} -> {target.dirname}")
    store.point_current(target.dirname)
    result = RollbackResult(before, target, None)
    if confirm and cfg.mqtt.url:
        say(
            f"==> confirm: waiting up to {cfg.mqtt.confirm_timeout_s:g}s for the edge to report version {target.version}"
        )
        result.confirm = wait_for_version(cfg.mqtt, target.version, name=target.name)
        say(f"    {'confirmed' if result.confirm.ok else 'NOT confirmed'}: {result.confirm.reason}")
    elif confirm:
        say("    confirmation skipped: mqtt.url is not set")
    return result
