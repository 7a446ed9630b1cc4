"""One writer per folder: an advisory lock on FOLDER/.lock that holds the writer's process id.

The lock is fcntl.flock on an open file, so the kernel releases it whenever the holding process
ends, however it ends (SIGKILL included): a lock file left behind by a dead process is simply taken
over by the next writer, and a reader can tell a live run from a killed one by trying the lock.
The file itself is kept (deleting a lock file races with a process about to lock it), except in a
finished `dllab train` run folder, which no process ever locks again.
On systems without fcntl (Windows) locking is skipped; docs/reliability.md says so.
"""

from __future__ import annotations

import os
from pathlib import Path

from dl_lab.errors import UserError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"
_held: set[FolderLock] = set()  # locks this process holds, even one whose object was dropped (drop_inherited)


class FolderInUse(UserError):
    """Another live process writes to this folder."""


class FolderLock:
    """Exclusive, non-blocking; ``with FolderLock(folder, what):`` or acquire()/release()."""

    def __init__(self, folder: Path, what: str = "folder") -> None:
        self.path, self.what, self._fd = Path(folder) / LOCK_FILE, what, None

    def acquire(self) -> "FolderLock":
        if fcntl is None:
            return self
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            pid = holder(self.path.parent)
            raise FolderInUse(f"{self.path.parent}: this {self.what} is in use by process {pid or '(unknown)'}, "
                              "which is still writing to it; wait for it to finish or stop it, then try again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        _held.add(self)
        return self

    def release(self, remove: bool = False) -> None:
        """Drop the lock. The file stays (see module doc), unless ``remove``: only for a folder that no
        other process will ever lock for writing, such as a finished `dllab train` run's."""
        if self._fd is not None:
            if remove:
                Path(self.path).unlink(missing_ok=True)
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None
            _held.discard(self)

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def drop_inherited() -> None:
    """In a forked child: close the descriptors of the locks inherited from the parent, without
    unlocking them (a flock belongs to the open file, which the parent still holds). Else the child
    would keep the parent's folders locked after the parent ended, even killed."""
    for lock in list(_held):
        if lock._fd is not None:
            os.close(lock._fd)
            lock._fd = None
    _held.clear()


def holder(folder: Path) -> int | None:
    """The process id written by the last holder of ``folder``'s lock (it may have ended)."""
    try:
        return int((Path(folder) / LOCK_FILE).read_text().strip() or 0) or None
    except (OSError, ValueError):
        return None


def is_locked(folder: Path) -> bool:
    """Does a live process hold ``folder``'s lock right now?"""
    if fcntl is None:
        return False
    try:
        fd = os.open(Path(folder) / LOCK_FILE, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
