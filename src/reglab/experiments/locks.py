"""One lock per group of units, so that concurrent runs on one folder share the work.

The driving process (``execute``), never a helper, takes ``<out>/locks/<group>.lock`` before a
group trains and releases it after the group's runs are written. A second ``reglab run`` on the
same folder skips the groups it finds locked, trains the rest, then waits for each locked group
and trains only what the other run left unfinished. The locks are ``filelock`` locks (``flock``
on POSIX): the operating system releases a lock when its process dies, so a ``kill -9``-ed run
never blocks a later one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from filelock import FileLock, Timeout

from .files import own_file, own_folder

__all__ = ["GroupLocks"]


class GroupLocks:
    """The locks one ``execute`` call holds, by group key."""

    def __init__(self, out: Path) -> None:
        self.folder = Path(out) / "locks"
        self.held: dict[str, FileLock] = {}

    def _lock(self, key: str) -> FileLock:
        name = hashlib.sha256(key.encode()).hexdigest()[:24]
        own_folder(self.folder.parent, "locks")
        # not thread-local: a lock this object took is released by it from any thread
        return FileLock(str(own_file(self.folder / f"{name}.lock")), thread_local=False)

    def try_acquire(self, key: str) -> bool:
        """Take the group's lock if no other process holds it."""
        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        self.held[key] = lock
        return True

    def wait(self, key: str) -> None:
        """Take the group's lock, waiting while another process holds it (Ctrl-C still works)."""
        lock = self._lock(key)
        lock.acquire(poll_interval=0.2)
        self.held[key] = lock

    def release(self, key: str) -> None:
        lock = self.held.pop(key, None)
        if lock is not None:
            lock.release()

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)
