"""The scheduled refresh, step by step.

    lock -> scan drop -> copy run -> move drop into dataset (journaled) -> eval (before)
         -> train update -> eval (after) -> gate -> export (signed) -> verify (and score the
         operator's false alarms: all must now pass) -> publish
         -> confirm -> swap run dir -> prune old bundles

Training works on a copy of the run in a hidden workspace next to the run directory;
the new data is moved into the dataset under a journal (the trainer records and later
re-reads the dataset path it learned from, so it must see the real one). A refusal,
a failure, a kill or a crash at any point therefore leaves the old run and the live
bundle as they were and puts the new data back into the drop directory (after a
crash: at the start of the next run). After "publish", anything short of an edge
confirmation puts `current` back where it was.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from linewatch.contract.feedback import is_feedback
from linewatch.deploy.refresh.codes import Exit
from linewatch.deploy.refresh.config import RefreshConfig
from linewatch.deploy.refresh.confirm import wait_for_version
from linewatch.deploy.refresh.drop import (
    DropScan,
    apply_drop,
    read_journal,
    scan_drop,
    scan_review,
    undo_drop,
)
from linewatch.deploy.refresh.fsutil import copytree_durable, exchange, remove_tree
from linewatch.deploy.refresh.gate import GateCheck, GateDecision, decide, read_eval
from linewatch.deploy.refresh.lock import LockBusy, RefreshLock
from linewatch.deploy.refresh.publish import (
    BundleError,
    LocalStore,
    PublishResult,
    Store,
    StoreError,
    open_store,
    read_identity,
)
from linewatch.deploy.refresh.rollback import rollback_to
from linewatch.deploy.refresh.runlog import RunRecord, append_record, utc_now
from linewatch.deploy.refresh.tools import (
    StepError,
    evaluate,
    export_bundle,
    read_run_info,
    train_update,
    verify,
)

__all__ = ["backup_path", "new_run_id", "run_refresh", "workspace_prefix"]

Say = Callable[[str], None]


def new_run_id() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(3)


def workspace_prefix(cfg: RefreshConfig) -> str:
    """Workspaces sit beside the run dir: same file system, so the final swap is a rename."""
    return f".{cfg.run_dir.name}.refresh-"


def backup_path(cfg: RefreshConfig) -> Path:
    """The run directory as it was before the last successful refresh."""
    return cfg.run_dir.with_name(f".{cfg.run_dir.name}.prev")


class _Refresh:
    """One run's state, so each step is a short method and the log sees everything."""

    def __init__(self, cfg: RefreshConfig, record: RunRecord, say: Say) -> None:
        self.cfg, self.record, self.say = cfg, record, say
        self.store: Store = open_store(cfg)
        self.workspace = cfg.run_dir.with_name(workspace_prefix(cfg) + record.run_id)
        self.published: PublishResult | None = None
        self.bundle: Path | None = None  # where the exporter wrote (workspace or hidden in the store)
        self.confirmed = False
        self.swapped = False
        self.journal = self.workspace / "drop-journal.json"
        self.feedback_files: list[Path] = []  # operator false alarms, where they are in the dataset
        self.false_alarms: list[dict[str, Any]] = []  # their scores by the new bundle (verify step)

    def step(self, name: str, text: str) -> contextlib.AbstractContextManager[None]:
        self.say(f"==> {name}: {text}")
        return self.record.timed(name)

    # ------------------------------------------------------------------ steps
    def scan(self) -> tuple[list[str], str, DropScan]:
        cfg = self.cfg
        with self.step("scan", f"looking for new data in {cfg.drop_dir}"):
            info = read_run_info(cfg.run_dir)
            scan = scan_drop(cfg.drop_dir, info.tasks, cfg.data_root, settle_s=cfg.steps.drop_settle_s)
            if cfg.review_dir is not None:
                scan_review(cfg.review_dir, info.tasks, cfg.data_root, scan, settle_s=cfg.steps.drop_settle_s)
        for task, items in sorted(scan.added.items()):
            self.say(f"    {task}: {len(items)} new good image(s)")
        for task, items in sorted(scan.new_tasks.items()):
            self.say(f"    {task}: new task ({len(items)} files)")
        for task, items in sorted(scan.review.items()):
            self.say(f"    {task}: {len(items)} reviewed defect(s) for the test set")
        for why in scan.ignored:
            self.say(f"    ignored: {why}")
        self.record.drop = scan.summary()
        live = self.store.current_published()
        self.record.versions["before"] = live.version if live else None
        self.say(f"    run {cfg.run_dir}: method {info.method or '?'}, tasks {', '.join(info.tasks)}")
        self.say(f"    live bundle: {live.dirname if live else 'none'}")
        return info.tasks, info.method, scan

    def recover(self) -> None:
        """Clean up after an interrupted run: undo its data move unless its run was swapped in."""
        cfg = self.cfg
        for stale in sorted(cfg.run_dir.parent.glob(workspace_prefix(cfg) + "*")):
            journal = stale / self.journal.name
            if journal.is_file():
                doc = read_journal(journal)
                if doc.get("run_copy_inode") == os.stat(cfg.run_dir).st_ino:
                    self.say(
                        f"    interrupted run {stale.name} had already put its run in place; keeping its data"
                    )
                else:
                    moved = undo_drop(journal)
                    self.say(
                        f"    interrupted run {stale.name}: {moved} file(s) moved back to the drop directory"
                    )
            self.say(f"    removing the workspace of an interrupted run: {stale}")
            remove_tree(stale)
        if isinstance(self.store, LocalStore):
            self.store.cleanup_temporaries(exports=True)

    def prepare(self, scan: DropScan) -> None:
        cfg, ws = self.cfg, self.workspace
        with self.step("prepare", f"copying the run to {ws / 'run'}"):
            ws.mkdir()
            copytree_durable(cfg.run_dir, ws / "run")
        with self.step("apply-drop", f"moving the new data into {cfg.data_root} (undone unless released)"):
            extra = {"run_id": self.record.run_id, "run_copy_inode": os.stat(ws / "run").st_ino}
            moved = apply_drop(scan, cfg.data_root, cfg.drop_dir, self.journal, extra)
        self.say(f"    {moved} file(s) moved, journal {self.journal}")

    def baseline(self, tasks: list[str]) -> dict[str, float | None]:
        cfg, ws = self.cfg, self.workspace
        if cfg.gate.baseline == "run":
            with self.step("eval-before", f"reading the run's own metrics ({cfg.run_dir / 'metrics.json'})"):
                return read_eval(cfg.run_dir / "metrics.json", cfg.gate.metric)
        with self.step("eval-before", f"evaluating the current model on {', '.join(tasks)}"):
            return evaluate(cfg, ws / "run", cfg.data_root, tasks, ws / "eval-before.json", self.say)

    def train(self, scan: DropScan) -> None:
        tasks = scan.tasks_to_train
        with self.step("train", f"continual update on the copy with {', '.join(tasks)}"):
            train_update(self.cfg, self.workspace / "run", self.cfg.data_root, tasks, self.say)

    def after(self, tasks: list[str]) -> dict[str, float | None]:
        ws = self.workspace
        with self.step("eval-after", f"evaluating the updated model on {', '.join(tasks)}"):
            return evaluate(self.cfg, ws / "run", self.cfg.data_root, tasks, ws / "eval-after.json", self.say)

    def false_alarm_check(self) -> GateCheck | None:
        """The operator's false alarms (drop files named by ``contract.feedback``) must now pass."""
        if not self.feedback_files:
            return None
        bad = [e for e in self.false_alarms if e.get("anomalous") is not False]
        worst = max((float(e.get("score", 1.0)) for e in self.false_alarms), default=1.0)
        n = len(self.feedback_files)
        msg = f"operator false alarms: {n - len(bad)}/{n} now pass (highest score {worst:.4f})"
        return GateCheck(
            "false-alarms", "feedback", None, worst, 0.5, not bad and len(self.false_alarms) == n, msg
        )

    def export(self, bank_only: bool) -> tuple[str, int]:
        ws, cfg, store = self.workspace, self.cfg, self.store
        if isinstance(store, LocalStore):
            # Into the store under a hidden name: a bank-only bundle is verified beside its
            # base, exactly where the edge will resolve it, and publishing is a rename.
            self.bundle = store.export_dir(self.record.run_id)
            store_dir, version = store.root, None
        else:
            if bank_only:
                self.say(
                    "    remote store: the base bundle is not here to prove a bank-only refresh against; full export"
                )
                bank_only = False
            self.bundle = ws / "bundle"
            store_dir, version = None, store.next_version()
        kind = "bank-only" if bank_only else "full"
        with self.step("export", f"{kind} signed bundle into {self.bundle}"):
            export_bundle(
                cfg,
                ws / "run",
                self.bundle,
                bank_only=bank_only,
                store=store_dir,
                version=version,
                say=self.say,
            )
        with self.step("verify", f"checking hashes, signature and golden samples with {cfg.public_key}"):
            self.false_alarms = verify(
                cfg, self.bundle, self.say, score=self.feedback_files, out=ws / "false-alarms.json"
            )
        name, version = read_identity(self.bundle)
        self.record.versions["after"] = version
        self.record.drop["export"] = kind
        return name, version

    def publish(self) -> PublishResult:
        with self.step("publish", f"installing into {self.store.description}"):
            assert self.bundle is not None
            self.published = self.store.publish(self.bundle)
        self.say(f"    current -> {self.published.dirname} (was {self.published.previous})")
        return self.published

    def confirm(self, name: str, version: int) -> bool:
        mqtt = self.cfg.mqtt
        if not mqtt.url:
            self.say("==> confirm: skipped, mqtt.url is not set (nothing checks that the edge loaded it)")
            self.record.confirm = {"skipped": True}
            self.confirmed = True
            return True
        roots = ", ".join(mqtt.topic_root)
        with self.step(
            "confirm", f"waiting up to {mqtt.confirm_timeout_s:g}s for {roots} to report v{version}"
        ):
            result = wait_for_version(mqtt, version, name=name)
        self.record.confirm = result.to_json()
        self.say(f"    {'confirmed' if result.ok else 'NOT confirmed'}: {result.reason}")
        self.confirmed = result.ok
        return result.ok

    def undo_publish(self, *, wait: bool) -> Exit:
        """Put `current` back on the previous bundle and hide the refused one."""
        assert self.published is not None
        previous = self.published.previous
        if previous is None:
            self.say("    no previous bundle to roll back to; the new one stays current")
            return Exit.ROLLBACK_FAILED
        with self.record.timed("rollback"):
            result = rollback_to(self.cfg, self.store, previous, confirm=wait, say=self.say)
            hidden = self.store.set_aside(self.published.dirname)
        self.say(f"    the refused bundle is kept as {hidden}")
        self.record.versions["live"] = result.to.version
        self.record.confirm = {**(self.record.confirm or {}), "rollback": result.to_json()}
        return Exit.ROLLED_BACK if result.ok else Exit.ROLLBACK_FAILED

    def finish(self) -> None:
        cfg, ws = self.cfg, self.workspace
        with self.step("swap-run", f"putting the updated run in place at {cfg.run_dir}"):
            atomic = exchange(cfg.run_dir, ws / "run")
            self.swapped = True  # from here on the new data belongs to the live run
            self.journal.unlink()
            remove_tree(backup_path(cfg))
            (ws / "run").rename(backup_path(cfg))
        if not atomic:
            self.say("    (no renameat2 here: swapped with three renames)")
        self.say(f"    previous run kept at {backup_path(cfg)}")
        with self.step("prune", f"keeping the newest {cfg.store.keep} bundles"):
            removed = self.store.prune(cfg.store.keep)
        for name in removed:
            self.say(f"    removed {name}")

    # ------------------------------------------------------------------ driver
    def run(self, dry_run: bool) -> Exit:
        cfg = self.cfg
        self.recover()  # first: a crashed run may have left drop files in the dataset
        known, method, scan = self.scan()
        if scan.empty:
            self.say("==> nothing to do: no new data in the drop directory")
            self.record.outcome = "nothing-to-do"
            self.record.versions["live"] = self.record.versions.get("before")
            return Exit.OK
        new_tasks = sorted(scan.new_tasks)
        bank_only = scan.only_adds_images and method.lower() in cfg.steps.memory_bank_methods
        if dry_run:
            self.say(
                f"==> dry run: would train {', '.join(scan.tasks_to_train)}, export {'bank-only' if bank_only else 'full'}"
            )
            self.record.outcome = "dry-run"
            return Exit.OK
        try:
            self.prepare(scan)
            before = self.baseline(known)
            self.train(scan)
            after = self.after(known + [t for t in new_tasks if t not in known])
            self.record.metrics = {"metric": cfg.gate.metric, "before": before, "after": after}
            with self.step(
                "gate",
                f"max drop {cfg.gate.max_drop:g} per earlier task, floor {cfg.gate.new_task_floor:g} for new tasks",
            ):
                decision = decide(
                    before,
                    after,
                    new_tasks,
                    metric=cfg.gate.metric,
                    max_drop=cfg.gate.max_drop,
                    new_task_floor=cfg.gate.new_task_floor,
                    max_drop_by_task=cfg.gate.max_drop_by_task,
                )
            self.record.gate = decision.to_json()
            for check in decision.checks:
                self.say(f"    {'ok     ' if check.ok else 'REFUSED'} {check.message}")
            if not decision.passed:
                self.say(
                    "==> refused by the gate: the live model stays; the drop stays for a person to look at"
                )
                self.record.outcome = "refused"
                return Exit.REFUSED
            self.feedback_files = [
                cfg.data_root / item.dest
                for items in scan.added.values()
                for item in items
                if is_feedback(item.src.name)
            ]
            name, version = self.export(bank_only)
            check = self.false_alarm_check()
            if check is not None:
                self.say(f"    {'ok     ' if check.ok else 'REFUSED'} {check.message}")
                decision = GateDecision(
                    decision.passed and check.ok, decision.metric, [*decision.checks, check]
                )
                self.record.gate = decision.to_json()
                if not check.ok:
                    self.say("==> refused: the new model still flags frames the operator marked good")
                    self.record.outcome = "refused"
                    return Exit.REFUSED
            self.publish()
            if not self.confirm(name, version):
                code = self.undo_publish(wait=True)
                self.record.outcome = code.outcome
                return code
            self.record.versions["live"] = version
            self.finish()
            self.record.outcome = "published"
            self.say(f"==> published {self.published.dirname if self.published else version}")
            return Exit.OK
        except BaseException:
            if self.published is not None and not self.confirmed:
                self.say("    interrupted after publishing: putting the previous bundle back")
                with contextlib.suppress(Exception):
                    self.undo_publish(wait=False)
            raise
        finally:
            if self.journal.is_file() and not self.swapped:
                moved = undo_drop(self.journal)
                self.say(f"    {moved} file(s) moved back to the drop directory")
            remove_tree(self.workspace)
            if self.bundle is not None and self.published is None:
                remove_tree(self.bundle)  # exported but never published (refused, failed verify)


def run_refresh(
    cfg: RefreshConfig, *, say: Say = print, dry_run: bool = False
) -> tuple[Exit, RunRecord | None]:
    """Do one refresh under the lock; log it; return (exit code, the logged record).

    Returns (Exit.LOCKED, None) without logging when another run holds the lock.
    """
    record = RunRecord(command="run", run_id=new_run_id())
    try:
        lock = RefreshLock(cfg.lock_path)
        lock.acquire()
    except LockBusy as exc:
        say(f"linewatch-refresh: {exc}")
        return Exit.LOCKED, None
    code = Exit.FAILED
    refresh: _Refresh | None = None
    try:
        say(f"==> lock: holding {cfg.lock_path} (run {record.run_id})")
        refresh = _Refresh(cfg, record, say)
        code = refresh.run(dry_run)
    except (StepError, StoreError, BundleError, ValueError, OSError) as exc:
        record.outcome, record.message = "failed", str(exc)[-4000:]
        say(f"==> FAILED: {exc}")
        if refresh is not None and refresh.swapped:
            say("    the new bundle is live and confirmed and the run was swapped; a finishing step failed")
        else:
            say("    the live bundle, the run directory and the dataset are unchanged")
        code = Exit.FAILED
    except KeyboardInterrupt:
        record.outcome, record.message = "interrupted", "stopped by a signal"
        say("==> interrupted; the workspace was removed")
        code = Exit.FAILED
    finally:
        record.finished, record.exit_code = utc_now(), int(code)
        try:
            if record.outcome != "dry-run":
                append_record(cfg.log_path, record)
        except OSError as exc:
            say(f"linewatch-refresh: could not write the refresh log {cfg.log_path}: {exc}")
        lock.release()
    return code, record
