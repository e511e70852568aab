"""`linewatch-refresh status`: what is live, what a rollback would go to, how the last run ended.

Read-only and cheap, so a line engineer can run it any time; `--live` also asks the
broker for the edge's retained status, which is what is *really* running.
"""

from __future__ import annotations

from typing import Any

from linewatch.deploy.refresh.config import RefreshConfig
from linewatch.deploy.refresh.confirm import read_status
from linewatch.deploy.refresh.publish import Store, StoreError
from linewatch.deploy.refresh.runlog import read_records

__all__ = ["collect_status", "format_status"]


def collect_status(cfg: RefreshConfig, store: Store, *, live: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"store": store.description}
    try:
        published = store.published()
        current = store.current()
        out["current"] = current
        out["previous"] = [p.dirname for p in reversed(published) if p.dirname != current]
        target = store.previous_of(current)
        out["rollback_target"] = target.dirname if target else None
    except StoreError as exc:
        out["error"] = str(exc)
    records = read_records(cfg.log_path)
    out["last_run"] = records[-1] if records else None
    if live and cfg.mqtt.url:
        out["live"] = read_status(cfg.mqtt)
    return out


def _describe_run(rec: dict[str, Any]) -> str:
    versions = rec.get("versions") or {}
    text = (
        f"{rec.get('started')} {rec.get('command')} -> {rec.get('outcome')} "
        f"(exit {rec.get('exit_code')}; version before {versions.get('before')}, "
        f"built {versions.get('after')}, live {versions.get('live')})"
    )
    reasons = (rec.get("gate") or {}).get("reasons") or []
    if reasons:
        text += "\n            gate: " + "; ".join(reasons)
    if rec.get("message"):
        text += "\n            " + str(rec["message"]).splitlines()[0]
    return text


def format_status(status: dict[str, Any]) -> str:
    lines = [f"store:     {status['store']}"]
    if "error" in status:
        lines.append(f"error:     {status['error']}")
    else:
        lines.append(f"current:   {status.get('current') or '(none)'}")
        lines.append(f"previous:  {', '.join(status.get('previous') or []) or '(none)'}")
        lines.append(f"rollback:  {status.get('rollback_target') or '(nothing to roll back to)'}")
    last = status.get("last_run")
    lines.append(f"last run:  {_describe_run(last) if last else '(no refresh logged yet)'}")
    for root, payload in (status.get("live") or {}).items():
        lines.append(f"live:      {root}: {payload}")
    return "\n".join(lines)
