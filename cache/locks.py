"""Lock managers for Prefect's SERIALIZABLE cache isolation.

Prefect's `FileSystemLockManager` creates a lock file and writes its owner in a
second step, so a waiter can read an empty file (`EOF while parsing`), and a
process killed between the two steps leaves a lock that blocks its key forever
or fails every later run. Its locks also never expire unless given a hold
timeout, which a SIGKILLed holder never releases.

`FileLockManager` implements Prefect's `LockManager` protocol with `flock(2)`:
the kernel drops a lock when its holder's file descriptor closes, which
includes every kind of process death, so no lock outlives its holder and no
one ever has to parse or judge a lock file. The file's content (holder, pid,
host) is only for people looking at the lock folder. One host only: flock
does not reach across machines (use Redis locks there).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import threading
import time
from pathlib import Path

import anyio
from prefect.locking.protocol import LockManager

__all__ = ["FileLockManager"]

_POLL_S = 0.05


class FileLockManager(LockManager):
    """Per-key exclusive locks on `<directory>/<key>.lock` held with flock.

    A lock is held by an open file descriptor of this process; it is released
    by `release_lock`, or by the kernel when the process dies. Waiters poll a
    non-blocking flock, so they never read the file's content.
    """

    def __init__(self, directory: str | os.PathLike) -> None:
        self.directory = Path(directory).expanduser()
        self._held: dict[str, tuple[str, int]] = {}  # key -> (holder, fd)
        self._mutex = threading.Lock()

    def _path(self, key: str) -> Path:
        if not key or "/" in key or key.startswith("."):
            raise ValueError(f"bad lock key {key!r}")
        return self.directory / f"{key}.lock"

    def _try_lock(self, key: str) -> int | None:
        """An fd holding the exclusive lock on key's current lock file, or None if busy."""
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self._path(key)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return None
            raise
        # A releaser unlinks the file after unlocking: the inode we locked may no
        # longer be the one at `path`, and a lock on it would exclude no one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            return self._try_lock(key)
        return fd

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        """Block until key is ours (True) or acquire_timeout passes (False).

        hold_timeout is not needed: a holder's death releases its lock.
        """
        with self._mutex:
            held = self._held.get(key)
            if held is not None and held[0] == holder:
                return True
        deadline = None if acquire_timeout is None else time.monotonic() + acquire_timeout
        while (fd := self._try_lock(key)) is None:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        info = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(),
                "since": time.time()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        with self._mutex:
            self._held[key] = (holder, fd)
        return True

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def release_lock(self, key: str, holder: str) -> None:
        with self._mutex:
            held = self._held.get(key)
            if held is None or held[0] != holder:
                raise ValueError(f"No lock held by {holder} for transaction with key {key}")
            del self._held[key]
        fd = held[1]
        try:
            self._path(key).unlink(missing_ok=True)  # while still locked: see _try_lock
        finally:
            os.close(fd)

    def is_locked(self, key: str) -> bool:
        with self._mutex:
            if key in self._held:
                return True
        try:
            fd = os.open(self._path(key), os.O_RDONLY)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        finally:
            os.close(fd)  # also drops the shared probe lock
        return False

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._mutex:
            held = self._held.get(key)
        return held is not None and held[0] == holder

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)
