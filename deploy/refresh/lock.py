"""One refresh at a time, per lock file.

`fcntl.flock` rather than a pid file: the kernel drops the lock when the process
dies, however it dies, so a crashed run never blocks the next night's run.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

__all__ = ["LockBusy", "RefreshLock"]


class LockBusy(Exception):
    """Another refresh holds the lock; `holder` is what it wrote there (its pid), if readable."""

    def __init__(self, path: Path, holder: str) -> None:
        self.path = path
        self.holder = holder
        who = f" by pid {holder}" if holder else ""
        super().__init__(
            f"another linewatch-refresh is running (lock {path} held{who}); not starting a second one"
        )


class RefreshLock:
    """Context manager holding an exclusive, non-blocking flock on `path`."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockBusy(self.path, holder) from None
        # The pid is informational only (for the message above); the flock is the lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> RefreshLock:
        self.acquire()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()
