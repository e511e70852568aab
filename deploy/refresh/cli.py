"""`linewatch-refresh run | rollback | status [--config FILE]`.

    run        one scheduled refresh (what the systemd timer starts)
    rollback   point the edge back at the previous bundle (or --to VERSION) and confirm
    status     current and previous bundles, the last logged run (--live: ask the broker)

Exit codes are listed in `deploy.refresh.codes.Exit` (0 ok, 1 failed, 2 config,
3 refused by the gate, 4 rolled back, 5 rollback not confirmed, 75 locked).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from collections.abc import Sequence
from types import FrameType

from linewatch.deploy.refresh.codes import Exit
from linewatch.deploy.refresh.config import ConfigError, RefreshConfig, load_config, preflight
from linewatch.deploy.refresh.lock import LockBusy, RefreshLock
from linewatch.deploy.refresh.publish import StoreError, open_store
from linewatch.deploy.refresh.rollback import choose_target, rollback_to
from linewatch.deploy.refresh.runlog import RunRecord, append_record, utc_now
from linewatch.deploy.refresh.status import collect_status, format_status
from linewatch.deploy.refresh.steps import new_run_id, run_refresh

__all__ = ["build_parser", "main"]


def _say(text: str) -> None:
    print(text, flush=True)


def build_parser() -> argparse.ArgumentParser:
    # --config is accepted before or after the subcommand; SUPPRESS keeps the
    # subcommand's copy from overwriting a value given before it.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config", default=argparse.SUPPRESS, help="TOML file (default /etc/linewatch/refresh.toml)"
    )
    parser = argparse.ArgumentParser(
        prog="linewatch-refresh", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default=None, help=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", parents=[common], help="one refresh: train, gate, export, publish, confirm")
    run.add_argument(
        "--dry-run", action="store_true", help="scan the drop directory and say what would happen"
    )
    rb = sub.add_parser(
        "rollback", parents=[common], help="repoint current to the previous bundle and confirm"
    )
    rb.add_argument("--to", type=int, metavar="VERSION", help="roll back to this published version")
    rb.add_argument("--no-confirm", action="store_true", help="do not wait for the edge's status")
    rb.add_argument(
        "--force", action="store_true", help="do not wait for the refresh lock (a run is in progress)"
    )
    st = sub.add_parser("status", parents=[common], help="show current/previous bundles and the last run")
    st.add_argument(
        "--live", action="store_true", help="also read the edge's retained status from the broker"
    )
    st.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _rollback(cfg: RefreshConfig, args: argparse.Namespace) -> Exit:
    record = RunRecord(command="rollback", run_id=new_run_id())
    lock = RefreshLock(cfg.lock_path)
    if not args.force:
        try:
            lock.acquire()
        except LockBusy as exc:
            _say(f"linewatch-refresh: {exc}\n    (use `rollback --force` in an emergency)")
            return Exit.LOCKED
    code = Exit.FAILED
    try:
        store = open_store(cfg)
        target = choose_target(store, args.to)
        before = store.current_published()
        record.versions = {"before": before.version if before else None, "after": target.version}
        with record.timed("rollback"):
            result = rollback_to(cfg, store, target, confirm=not args.no_confirm, say=_say)
        record.confirm = result.to_json()
        record.versions["live"] = target.version if result.ok else None
        code = Exit.OK if result.ok else Exit.ROLLBACK_FAILED
        record.outcome = "rolled-back" if result.ok else "rollback-failed"
        _say(
            f"==> {'done' if result.ok else 'current repointed, but the edge did not confirm'}: current -> {target.dirname}"
        )
    except StoreError as exc:
        record.outcome, record.message = "failed", str(exc)
        _say(f"==> FAILED: {exc}")
    finally:
        record.finished, record.exit_code = utc_now(), int(code)
        try:
            append_record(cfg.log_path, record)
        except OSError as exc:
            _say(f"linewatch-refresh: could not write the refresh log {cfg.log_path}: {exc}")
        lock.release()
    return code


def _status(cfg: RefreshConfig, args: argparse.Namespace) -> Exit:
    status = collect_status(cfg, open_store(cfg), live=args.live)
    if args.json:
        print(json.dumps(status, indent=2, sort_keys=True, default=str))
    else:
        print(format_status(status))
    return Exit.FAILED if "error" in status else Exit.OK


def _terminate(signum: int, _frame: FrameType | None) -> None:
    # systemd stops a unit with SIGTERM; turn it into the same clean path as Ctrl-C
    # so the workspace is removed and the run is logged.
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        cfg = load_config(args.config)
        preflight(cfg, args.command)
    except ConfigError as exc:
        print(f"linewatch-refresh: {exc}", file=sys.stderr)
        return int(Exit.CONFIG)
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main else None
    try:
        if args.command == "run":
            code, _record = run_refresh(cfg, say=_say, dry_run=args.dry_run)
        elif args.command == "rollback":
            code = _rollback(cfg, args)
        else:
            code = _status(cfg, args)
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, previous)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
