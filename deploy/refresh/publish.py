"""Publishing bundles into the store the edge watches, so the edge never sees half a bundle.

Store layout (the contract with the edge and the exporter, written once in `contract/store.py`):

    <store>/<name>-v000007/    one complete, immutable bundle per version
    <store>/current -> <name>-v000007   (relative symlink: the store may be mounted elsewhere)
    <store>/.<name>.engines/, .<name>-v000007.engines/   engine caches the edge keeps
    <store>/.incoming-*, .rejected-*, .trash-*   hidden: the edge ignores dot-names

A publish copies to a hidden temporary name, flushes it to disk, renames it to its
final name, then replaces `current` with one `rename(2)` of a fresh symlink. Each
step is atomic, so a reader that resolves `current` always gets a complete bundle,
whatever moment it looks, and a crash at any point leaves the old bundle live.

`LocalStore` does this with system calls; `RemoteStore` does the same over ssh
(rsync to the hidden name, then `mv -T` on the box), for a trainer that is not the
edge box.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from linewatch.contract.errors import BundleError
from linewatch.contract.manifest import MANIFEST_NAME, MODEL_NAME
from linewatch.contract.store import (
    CURRENT,
    CURRENT_TMP_PREFIX,
    Published,
    bundle_dirname,
    engine_cache_name,
    engine_cache_owner,
    model_cache_name,
    parse_dirname,
    point_current,
    read_identity,
)
from linewatch.deploy.refresh.config import RefreshConfig
from linewatch.deploy.refresh.fsutil import (
    copytree_durable,
    fsync_dir,
    fsync_file,
    random_suffix,
    remove_tree,
)

__all__ = [
    "CURRENT",
    "BundleError",
    "LocalStore",
    "PublishResult",
    "Published",
    "RemoteStore",
    "Store",
    "StoreError",
    "bundle_dirname",
    "open_store",
    "read_identity",
]

_HIDDEN_TEMP = (".incoming-", ".trash-", ".swap-")
EXPORT_PREFIX = ".export-"
KEEP_REJECTED = 3


class StoreError(RuntimeError):
    """The store refused an operation (version not increasing, missing target, ssh failure)."""


@dataclass(frozen=True)
class PublishResult:
    dirname: str
    name: str
    version: int
    previous: str | None  # what `current` pointed to before, for rollback


class Store:
    """What publishing, rollback and status need from a bundle store, local or remote."""

    description: str

    # -- primitives each kind of store implements
    def _names(self) -> list[str]:
        raise NotImplementedError

    def _readlink(self) -> str | None:
        raise NotImplementedError

    def _install(self, bundle: Path, dirname: str) -> None:
        """Make `bundle`'s content appear atomically as `<store>/<dirname>`."""
        raise NotImplementedError

    def _point(self, dirname: str) -> None:
        raise NotImplementedError

    def _rename(self, old: str, new: str) -> None:
        raise NotImplementedError

    def _remove(self, dirname: str) -> None:
        """Remove a folder of the store; `dirname` may be nested (`a/b`)."""
        raise NotImplementedError

    def _subdirs(self, dirname: str) -> list[str]:
        """The folders inside `<store>/<dirname>` (none when it is missing)."""
        raise NotImplementedError

    def _manifest(self, dirname: str) -> dict:
        """The parsed manifest.json of a published bundle ({} when unreadable)."""
        raise NotImplementedError

    # -- behaviour shared by both
    def published(self) -> list[Published]:
        """Published bundles, oldest version first (dot-names and `current` excluded)."""
        found = (parse_dirname(n) for n in self._names() if not n.startswith("."))
        return sorted(p for p in found if p is not None)

    def current(self) -> str | None:
        """Directory name `current` points to, or None before the first publish."""
        target = self._readlink()
        return None if target is None else target.rstrip("/").rsplit("/", 1)[-1]

    def current_published(self) -> Published | None:
        cur = self.current()
        return parse_dirname(cur) if cur else None

    def previous_of(self, dirname: str | None) -> Published | None:
        """The highest published version below `dirname`'s: where a rollback goes."""
        cur = parse_dirname(dirname) if dirname else None
        older = [p for p in self.published() if cur is None or p.version < cur.version]
        return older[-1] if older else None

    def publish(self, bundle: Path) -> PublishResult:
        """Install `bundle` under its versioned name and make it current."""
        name, version = read_identity(bundle)
        dirname = bundle_dirname(name, version)
        existing = self.published()
        if existing and version <= existing[-1].version:
            raise StoreError(
                f"{self.description}: bundle version {version} is not above the highest published "
                f"version {existing[-1].version} ({existing[-1].dirname}); versions only increase"
            )
        previous = self.current()
        self._install(Path(bundle), dirname)
        self._point(dirname)
        return PublishResult(dirname, name, version, previous)

    def point_current(self, dirname: str) -> None:
        """Atomically repoint `current` (used by rollback)."""
        if dirname not in {p.dirname for p in self.published()}:
            raise StoreError(f"{self.description}: no published bundle {dirname!r}")
        self._point(dirname)

    def set_aside(self, dirname: str) -> str:
        """Hide a bundle the edge refused, keeping it for diagnosis and freeing its version."""
        hidden = f".rejected-{dirname}-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
        self._rename(dirname, hidden)
        return hidden

    def next_version(self) -> int | None:
        """One above the highest version ever installed here (refused ones included), or None."""
        versions = [p.version for p in self.published()]
        for name in self._names():
            if name.startswith(".rejected-"):
                parsed = parse_dirname(name.removeprefix(".rejected-").rsplit("-", 1)[0])
                if parsed is not None:
                    versions.append(parsed.version)
        return max(versions) + 1 if versions else None

    def _base_of(self, item: Published, by_version: dict[int, Published]) -> Published | None:
        """The full bundle a bank-only bundle runs on (`manifest.bank_only.base_version`)."""
        info = self._manifest(item.dirname).get("bank_only")
        if isinstance(info, dict) and isinstance(info.get("base_version"), int):
            return by_version.get(info["base_version"])
        return None

    def _graph_key(self, item: Published, by_version: dict[int, Published]) -> str | None:
        """The cache key (sha256[:16] of model.onnx) of the graph `item` runs: its base's if bank-only."""
        base = self._base_of(item, by_version)
        files = self._manifest((base or item).dirname).get("files") or {}
        graph = files.get(MODEL_NAME) if isinstance(files, dict) else None
        return graph[:16] if isinstance(graph, str) and len(graph) >= 16 else None

    def _prune_model_caches(self, survivors: list[Published], caches: set[str]) -> list[str]:
        """In each model's plan cache, drop the plans of graphs no surviving bundle runs.

        A cache is left whole when any surviving bundle's graph cannot be read: better a
        stale plan on disk than a rebuild (minutes on a Jetson) after a rollback.
        """
        by_version = {p.version: p for p in survivors}
        removed = []
        for cache in sorted(caches):
            keys = [self._graph_key(p, by_version) for p in survivors if model_cache_name(p.name) == cache]
            if not keys or None in keys:
                continue
            for sub in self._subdirs(cache):
                if sub not in keys:
                    self._remove(f"{cache}/{sub}")
                    removed.append(f"{cache}/{sub}")
        return removed

    def prune(self, keep: int) -> list[str]:
        """Delete old bundles beyond `keep`; never what the edge may need.

        Kept always: the current bundle, its rollback target, and the base bundle of
        every kept bank-only bundle (a bank-only refresh runs the base's graph and
        engines, found beside it). The engine cache the edge keeps beside a bundle goes
        with it; in a model's shared plan cache only the graphs of kept bundles stay.
        Refused bundles set aside by a rollback are kept for diagnosis, the newest few only.
        """
        published = self.published()
        by_version = {p.version: p for p in published}
        cur = self.current()
        kept = {p.dirname for p in published[-keep:]} if keep > 0 else set()
        if cur is not None:
            kept.add(cur)
        prev = self.previous_of(cur)
        if prev is not None:
            kept.add(prev.dirname)
        pending = [p for p in published if p.dirname in kept]
        while pending:
            base = self._base_of(pending.pop(), by_version)
            if base is not None and base.dirname not in kept:
                kept.add(base.dirname)
                pending.append(base)
        names = set(self._names())
        removed: list[str] = []
        for item in published:
            if item.dirname in kept:
                continue
            self._remove(item.dirname)
            removed.append(item.dirname)
            if engine_cache_name(item.dirname) in names:
                self._remove(engine_cache_name(item.dirname))
        survivors = self.published()
        live = {p.dirname for p in survivors}
        models = {model_cache_name(p.name) for p in survivors}
        gone = {engine_cache_name(r) for r in removed}
        for name in sorted(names - gone - models):
            # Engine caches of bundles that are gone (refused and set aside, or pruned earlier).
            owner = engine_cache_owner(name)
            if owner is not None and owner not in live:
                self._remove(name)
                removed.append(name)
        removed += self._prune_model_caches(survivors, names & models)
        rejected = sorted(n for n in names if n.startswith(".rejected-"))
        for name in rejected[: max(0, len(rejected) - KEEP_REJECTED)]:
            self._remove(name)
            removed.append(name)
        return removed


class LocalStore(Store):
    """A bundle store on this machine's file system (the edge runs here, or mounts it)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.description = f"bundle store {self.root}"

    def _names(self) -> list[str]:
        if not self.root.is_dir():
            raise StoreError(f"{self.description} does not exist")
        return sorted(
            n
            for n in os.listdir(self.root)
            if n != CURRENT and not (self.root / n).is_symlink() and (self.root / n).is_dir()
        )

    def _readlink(self) -> str | None:
        link = self.root / CURRENT
        return os.readlink(link) if link.is_symlink() else None

    def _manifest(self, dirname: str) -> dict:
        try:
            doc = json.loads((self.root / dirname / MANIFEST_NAME).read_text())
        except (OSError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def export_dir(self, run_id: str) -> Path:
        """A hidden folder in the store for the exporter to write into.

        Exporting in place means a bank-only bundle is verified beside its base (where
        the edge will look for it), and publishing it is a rename, not a copy.
        """
        return self.root / f"{EXPORT_PREFIX}{run_id}"

    def cleanup_temporaries(self, *, exports: bool = False) -> None:
        """Remove leftovers of a crashed publish (the refresh lock is held, so none is live)."""
        prefixes = (*_HIDDEN_TEMP, EXPORT_PREFIX) if exports else _HIDDEN_TEMP
        for name in os.listdir(self.root):
            path = self.root / name
            if name.startswith(prefixes):
                remove_tree(path)
            elif name.startswith(CURRENT_TMP_PREFIX) and path.is_symlink():
                path.unlink()

    def _install(self, bundle: Path, dirname: str) -> None:
        self.cleanup_temporaries()
        final = self.root / dirname
        if final.exists():
            raise StoreError(f"{self.description}: {dirname} already exists")
        if Path(bundle).parent.resolve() == self.root.resolve() and Path(bundle).name.startswith("."):
            # Already in the store under a hidden name (see export_dir): flush it, rename it.
            for dirpath, _dirs, files in os.walk(bundle):
                for name in files:
                    fsync_file(Path(dirpath) / name)
                fsync_dir(Path(dirpath))
            os.rename(bundle, final)
            fsync_dir(self.root)
            return
        incoming = self.root / f".incoming-{random_suffix()}"
        try:
            copytree_durable(bundle, incoming)
            os.rename(incoming, final)
        except BaseException:
            remove_tree(incoming)
            raise
        fsync_dir(self.root)

    def _point(self, dirname: str) -> None:
        point_current(self.root, dirname)

    def _rename(self, old: str, new: str) -> None:
        os.rename(self.root / old, self.root / new)
        fsync_dir(self.root)

    def _remove(self, dirname: str) -> None:
        remove_tree(self.root / dirname)

    def _subdirs(self, dirname: str) -> list[str]:
        folder = self.root / dirname
        if not folder.is_dir():
            return []
        return sorted(
            n for n in os.listdir(folder) if (folder / n).is_dir() and not (folder / n).is_symlink()
        )


Runner = Callable[..., subprocess.CompletedProcess]


class RemoteStore(Store):
    """The same store on another machine, reached with ssh and rsync.

    The edge box needs only a POSIX shell with GNU coreutils (`mv -T`, `ln`, `sync`)
    and rsync; the sequence of renames is the same as `LocalStore`'s.
    """

    def __init__(
        self,
        dest: str,
        path: str,
        *,
        ssh: Sequence[str] = ("ssh", "-o", "BatchMode=yes"),
        rsync: Sequence[str] = ("rsync",),
        runner: Runner = subprocess.run,
        timeout_s: float = 3600.0,
    ) -> None:
        self.dest, self.path = dest, path.rstrip("/") or "/"
        self.ssh, self.rsync = list(ssh), list(rsync)
        self.runner = runner
        self.timeout_s = timeout_s
        self.description = f"remote bundle store {dest}:{self.path}"

    def _run(self, argv: list[str]) -> str:
        proc = self.runner(argv, capture_output=True, text=True, timeout=self.timeout_s, check=False)
        if proc.returncode != 0:
            raise StoreError(
                f"{self.description}: {shlex.join(argv[:3])} ... failed (exit {proc.returncode}): "
                f"{(proc.stderr or '').strip()[-500:]}"
            )
        return proc.stdout or ""

    def _sh(self, script: str, *, if_missing: str = "") -> str:
        """Run a POSIX shell script on the box, inside the store directory.

        With `if_missing`, that runs instead when the store does not exist yet
        (listing an absent store is empty, not an error).
        """
        q = shlex.quote(self.path)
        guard = f"if [ ! -d {q} ]; then {if_missing}; exit 0; fi; " if if_missing else ""
        return self._run([*self.ssh, self.dest, f"set -e; {guard}cd -- {q}; {script}"])

    def _names(self) -> list[str]:
        out = self._sh(
            'for d in * .[!.]*; do if [ -d "$d" ] && [ ! -L "$d" ]; then echo "$d"; fi; done', if_missing=":"
        )
        return sorted(line for line in out.splitlines() if line and line != CURRENT)

    def _readlink(self) -> str | None:
        out = self._sh(f"if [ -L {CURRENT} ]; then readlink {CURRENT}; fi", if_missing=":").strip()
        return out or None

    def _install(self, bundle: Path, dirname: str) -> None:
        incoming = f".incoming-{random_suffix()}"
        q_final, q_incoming = shlex.quote(dirname), shlex.quote(incoming)
        self._run([*self.ssh, self.dest, f"mkdir -p -- {shlex.quote(self.path)}"])
        self._sh(f"test ! -e {q_final} || {{ echo '{dirname} already exists' >&2; exit 1; }}")
        try:
            self._run(
                [
                    *self.rsync,
                    "-a",
                    "-s",  # protect args: spaces in the remote path survive the remote shell
                    "--delete",
                    "-e",
                    shlex.join(self.ssh),
                    f"{Path(bundle)}/",
                    f"{self.dest}:{self.path}/{incoming}/",
                ]
            )
            # sync before the rename: the bundle must be on disk before its name is.
            self._sh(f"sync; mv -T -- {q_incoming} {q_final}; sync")
        except BaseException:
            with contextlib.suppress(StoreError, subprocess.SubprocessError, OSError):
                self._sh(f"rm -rf -- {q_incoming}")
            raise

    def _point(self, dirname: str) -> None:
        tmp = shlex.quote(f"{CURRENT_TMP_PREFIX}{random_suffix()}")
        q = shlex.quote(dirname)
        self._sh(f"test -d {q}; ln -s -- {q} {tmp}; mv -T -- {tmp} {CURRENT}; sync")

    def _rename(self, old: str, new: str) -> None:
        self._sh(f"mv -T -- {shlex.quote(old)} {shlex.quote(new)}; sync")

    def _manifest(self, dirname: str) -> dict:
        try:
            doc = json.loads(self._sh(f"cat -- {shlex.quote(dirname)}/{MANIFEST_NAME}"))
        except (StoreError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    def _remove(self, dirname: str) -> None:
        trash = shlex.quote(f".trash-{dirname.replace('/', '_')}-{random_suffix()}")
        self._sh(f"mv -T -- {shlex.quote(dirname)} {trash}; rm -rf -- {trash}")

    def _subdirs(self, dirname: str) -> list[str]:
        q = shlex.quote(dirname)
        out = self._sh(
            f'if [ -d {q} ]; then cd -- {q}; for d in *; do if [ -d "$d" ] && [ ! -L "$d" ]; then echo "$d"; fi; done; fi'
        )
        return sorted(line for line in out.splitlines() if line)


def open_store(cfg: RefreshConfig) -> Store:
    """The store named by the config: `store.dir` locally, else `store.remote` over ssh."""
    if cfg.store.dir is not None:
        return LocalStore(cfg.store.dir)
    dest, path = cfg.store.remote_parts()
    return RemoteStore(dest, path, ssh=cfg.store.ssh, rsync=cfg.store.rsync)
