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
does not reach across machines.

`RedisLeaseLockManager` is prefect-redis's `RedisLockManager` for several
hosts, plus what it lacks: Prefect takes locks without a hold timeout, so a
worker killed while holding one would block its key forever. Here every lock
is a lease of `lease_s` seconds that a thread of the live holder renews; a
SIGKILLed or disconnected holder stops renewing and its lock expires. Waiting
polls instead of taking a throw-away lock, and every call has socket
timeouts, so a Redis that goes away ends the run with one `LockError`
naming the lock URL instead of a hang.

`lock_manager(setting, lock_dir)` picks one from the `--locks` /
`MEMOTUNE_LOCKS` setting: `file` (default) or a `redis://` URL (lease
length: $MEMOTUNE_LOCK_LEASE_S, default 30 s).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
from prefect.locking.protocol import LockManager

from cache.errors import LockError
from cache.keys import redact
from cache.lock_setting import check_lock_setting

__all__ = ["FileLockManager", "RedisLeaseLockManager", "check_lock_setting", "lock_manager"]

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


# --------------------------------------------------------------------------- Redis

REDIS_TIMEOUTS = {"socket_timeout": "5", "socket_connect_timeout": "5"}
DEFAULT_LEASE_S = 30.0


def _with_timeouts(url: str) -> str:
    """The URL with socket timeouts added unless it sets its own (redis-py reads them)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query = {**REDIS_TIMEOUTS, **query}
    return urlunsplit(parts._replace(query=urlencode(query)))


def _redis_errors() -> tuple[type[BaseException], ...]:
    from redis.exceptions import RedisError

    return (RedisError, OSError)


class RedisLeaseLockManager(LockManager):
    """prefect-redis locks as leases: renewed while the holder lives, expired after."""

    def __init__(self, url: str, lease_s: float = DEFAULT_LEASE_S) -> None:
        from prefect_redis.locking import RedisLockManager

        self.url = redact(url)
        self.lease_s = float(lease_s)
        self._inner = RedisLockManager(connection_url=_with_timeouts(url))
        self._renewers: dict[str, threading.Event] = {}
        self._mutex = threading.Lock()

    @contextmanager
    def _calling(self, what: str) -> Iterator[None]:
        try:
            yield
        except _redis_errors() as e:
            raise LockError(f"lock server {self.url}: {what} failed: {type(e).__name__}: "
                            f"{redact(str(e))}") from None

    def acquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                     hold_timeout: float | None = None) -> bool:
        with self._calling(f"lock {key}"):
            ok = self._inner.acquire_lock(key, holder, acquire_timeout,
                                          hold_timeout or self.lease_s)
        if ok:
            self._start_renewing(key, holder)
        return ok

    async def aacquire_lock(self, key: str, holder: str, acquire_timeout: float | None = None,
                            hold_timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(
            self.acquire_lock, key, holder, acquire_timeout, hold_timeout)

    def _start_renewing(self, key: str, holder: str) -> None:
        from redis.lock import Lock

        with self._mutex:
            if key in self._renewers:
                return
            stop = self._renewers[key] = threading.Event()
        # The same Redis lock (prefect-redis names it lock:<key>, token = holder),
        # extended through redis-py's own Lock, which checks the token atomically.
        lock = Lock(self._inner.client, f"lock:{key}", timeout=self.lease_s, thread_local=False)
        lock.local.token = holder.encode()
        log = logging.getLogger("memotune.locks")

        def renew() -> None:
            from redis.exceptions import LockError as RedisLockError

            while not stop.wait(self.lease_s / 3):
                try:
                    lock.extend(self.lease_s, replace_ttl=True)
                except RedisLockError:
                    log.error("lost the lock on %s (lease expired)", key)
                    return
                except _redis_errors() as e:  # retried until the lease runs out
                    log.warning("could not renew the lock on %s at %s: %s", key, self.url, e)

        threading.Thread(target=renew, name=f"memotune-lock-{key[:8]}", daemon=True).start()

    def _stop_renewing(self, key: str) -> None:
        with self._mutex:
            stop = self._renewers.pop(key, None)
        if stop is not None:
            stop.set()

    def release_lock(self, key: str, holder: str) -> None:
        """Release key. A lease that lapsed while held (a renewal came too late on a
        starved machine; another holder may have taken the key since) is a warning,
        not a failed run, since the store's commit does not depend on
        the lock (manifest last, verified) and the holder's work is already done."""
        from redis.exceptions import LockNotOwnedError

        self._stop_renewing(key)
        with self._calling(f"unlock {key}"):
            try:
                self._inner.release_lock(key, holder)  # ValueError: never ours (caller's bug)
                return
            except LockNotOwnedError:  # ours by this process's record, not by Redis's:
                # prefect-redis raises before forgetting it, and would keep calling us holder
                self._inner._locks.pop(f"lock:{key}", None)
            logging.getLogger("memotune.locks").warning(
                "the lease on lock %s lapsed before its release, so another run may have "
                "taken it (a lease of %.0f s was not renewed in time; raise "
                "MEMOTUNE_LOCK_LEASE_S on a loaded machine)", key, self.lease_s)

    def is_locked(self, key: str) -> bool:
        with self._calling(f"look up lock {key}"):
            return self._inner.is_locked(key)

    def is_lock_holder(self, key: str, holder: str) -> bool:
        with self._calling(f"look up lock {key}"):
            return self._inner.is_lock_holder(key, holder)

    def wait_for_lock(self, key: str, timeout: float | None = None) -> bool:
        """Poll until free: taking a throw-away lock (as prefect-redis does) would leave
        a lock without expiry if this process died holding it."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_locked(key):
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.1)
        return True

    async def await_for_lock(self, key: str, timeout: float | None = None) -> bool:
        return await anyio.to_thread.run_sync(self.wait_for_lock, key, timeout)


def lock_manager(setting: str | None, lock_dir: str | os.PathLike) -> LockManager:
    """The lock manager for a `--locks` / MEMOTUNE_LOCKS setting (None: file)."""
    setting = check_lock_setting(setting or "file")
    if setting == "file":
        return FileLockManager(lock_dir)
    lease = os.environ.get("MEMOTUNE_LOCK_LEASE_S")
    return RedisLeaseLockManager(setting, float(lease) if lease else DEFAULT_LEASE_S)
