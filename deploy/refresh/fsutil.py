"""File-system primitives the refresh job's crash safety rests on.

Everything here exists because a plain copy or rename is not enough on its own:
data must reach the disk (fsync) *before* the rename that makes it visible, and the
rename must be recorded (fsync of the parent directory) before we tell anyone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import secrets
import shutil
from pathlib import Path

__all__ = [
    "copytree_durable",
    "exchange",
    "fsync_dir",
    "fsync_file",
    "random_suffix",
    "remove_tree",
]


def random_suffix() -> str:
    """A short random token for temporary names, so two writers never collide."""
    return secrets.token_hex(6)


def fsync_file(path: Path) -> None:
    """Flush one file's data to disk; a rename is only safe after this."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries, so a create or rename inside it survives a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def copytree_durable(src: Path, dst: Path) -> None:
    """Copy a tree and fsync every file and directory in it.

    `dst` must not exist. Symlinks inside the tree are refused: a bundle or run
    directory must be self-contained, or the edge could end up reading a file that
    changes under it.
    """
    src, dst = Path(src), Path(dst)
    for dirpath, dirnames, filenames in os.walk(src):
        rel = Path(dirpath).relative_to(src)
        target_dir = dst / rel
        target_dir.mkdir(parents=rel == Path("."), exist_ok=False)
        for name in dirnames:
            if (Path(dirpath) / name).is_symlink():
                raise ValueError(f"refusing to copy symlinked directory {Path(dirpath) / name}")
        for name in filenames:
            source = Path(dirpath) / name
            if source.is_symlink():
                raise ValueError(f"refusing to copy symlink {source}")
            target = target_dir / name
            shutil.copy2(source, target)
            fsync_file(target)
    # Directories last, deepest first, so every entry is durable before its parent.
    for dirpath, _dirnames, _filenames in sorted(os.walk(dst), key=lambda t: -len(Path(t[0]).parts)):
        fsync_dir(Path(dirpath))


def remove_tree(path: Path) -> None:
    """Remove a directory tree by first renaming it to a hidden name.

    The rename is atomic, so nobody scanning the parent ever sees a half-deleted
    directory under its real name.
    """
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_symlink() or path.is_file():
        path.unlink()
        return
    trash = path.with_name(f".trash-{path.name}-{random_suffix()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _renameat2() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return None
    try:
        func = ctypes.CDLL(libc_name, use_errno=True).renameat2
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    func.restype = ctypes.c_int
    return func


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux renameat2 RENAME_EXCHANGE).

    Used to put the updated run directory in place: at every instant `a` names a
    complete run, either the old or the new. Returns True when the atomic swap was
    used. Where the kernel or file system lacks it, falls back to three renames;
    the window in between is a few microseconds and is reported by returning False.
    """
    func = _renameat2()
    if func is not None:
        rc = func(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
        if rc == 0:
            fsync_dir(Path(a).parent)
            if Path(b).parent != Path(a).parent:
                fsync_dir(Path(b).parent)
            return True
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
            raise OSError(err, os.strerror(err), str(a))
    tmp = Path(a).with_name(f".swap-{Path(a).name}-{random_suffix()}")
    os.rename(a, tmp)
    os.rename(b, a)
    os.rename(tmp, b)
    fsync_dir(Path(a).parent)
    return False
