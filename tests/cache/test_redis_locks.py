"""RedisLeaseLockManager: prefect-redis locks that expire when their holder dies.

Real redis-server on loopback (tests/conftest.py). Two managers stand for two
hosts; the holder that dies is a subprocess killed with SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cache.errors import LockError
from cache.lock_setting import check_lock_setting
from cache.locks import FileLockManager, RedisLeaseLockManager, lock_manager

REPO = Path(__file__).resolve().parents[2]
KEY = "b" * 64
LEASE = 1.5

HOLD = textwrap.dedent(
    """
    import sys, time
    from cache.locks import RedisLeaseLockManager
    m = RedisLeaseLockManager(sys.argv[1], lease_s=float(sys.argv[3]))
    assert m.acquire_lock(sys.argv[2], holder="doomed")
    print("held", flush=True)
    time.sleep(600)
    """
)


@pytest.fixture
def key(request) -> str:
    """A lock key of its own per test (the Redis server is shared by the session)."""
    return f"{abs(hash(request.node.name)):064x}"[-64:]


def test_one_holder_across_hosts_and_release(redis_url, key):
    a = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    b = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    assert a.acquire_lock(key, holder="a")
    assert b.is_locked(key) and not b.is_lock_holder(key, "a")
    assert not b.acquire_lock(key, holder="b", acquire_timeout=0.3)
    a.release_lock(key, holder="a")
    assert b.wait_for_lock(key, timeout=2) and b.acquire_lock(key, holder="b", acquire_timeout=2)
    b.release_lock(key, holder="b")
    assert not a.is_locked(key)


def test_a_live_holder_keeps_its_lease(redis_url, key):
    a = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    b = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    assert a.acquire_lock(key, holder="a")
    assert not b.acquire_lock(key, holder="b", acquire_timeout=3 * LEASE)  # renewed meanwhile
    a.release_lock(key, holder="a")


def test_releasing_a_lapsed_lease_another_holder_took_is_a_warning(redis_url, key, caplog):
    """A renewal that came too late on a starved CI machine failed a finished flow run:
    the lease lapsed, another worker took the lock, and releasing it raised."""
    import redis

    a = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    b = RedisLeaseLockManager(redis_url, lease_s=LEASE)
    server = redis.Redis.from_url(redis_url)
    assert a.acquire_lock(key, holder="a")
    server.delete(f"lock:{key}")  # a's lease lapses, and no one takes the key
    a.release_lock(key, holder="a")
    assert a.acquire_lock(key, holder="a")
    server.delete(f"lock:{key}")  # a's lease lapses, and b takes the key
    assert b.acquire_lock(key, holder="b", acquire_timeout=1)
    a.release_lock(key, holder="a")
    assert b.is_lock_holder(key, "b"), "releasing a lapsed lease freed the new holder's lock"
    assert any("lapsed" in r.getMessage() and key in r.getMessage() for r in caplog.records)
    with pytest.raises(ValueError):  # a lock never held is still the caller's error
        a.release_lock(key, holder="never")
    b.release_lock(key, holder="b")
    assert not a.is_locked(key)


def test_a_killed_holder_frees_its_key_after_the_lease(redis_url, key):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, redis_url, key, str(LEASE)],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        other = RedisLeaseLockManager(redis_url, lease_s=LEASE)
        assert other.is_locked(key)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        t0 = time.monotonic()
        assert other.acquire_lock(key, holder="other", acquire_timeout=LEASE + 5)
        waited = time.monotonic() - t0
        assert waited <= LEASE + 1.0, f"lease of {LEASE} s took {waited:.1f} s to expire"
        other.release_lock(key, holder="other")
    finally:
        holder.kill()
        holder.wait()


def test_an_unreachable_redis_fails_fast_naming_the_url():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    m = RedisLeaseLockManager(f"redis://:hunter2@127.0.0.1:{port}/0")
    t0 = time.monotonic()
    with pytest.raises(LockError, match=f"lock server redis://\\*\\*\\*@127.0.0.1:{port}/0") as e:
        m.acquire_lock(KEY, holder="x", acquire_timeout=1)
    assert time.monotonic() - t0 < 30 and "hunter2" not in str(e.value)


def test_lock_settings(tmp_path, redis_url):
    assert isinstance(lock_manager(None, tmp_path), FileLockManager)
    assert isinstance(lock_manager("file", tmp_path), FileLockManager)
    assert isinstance(lock_manager(redis_url, tmp_path), RedisLeaseLockManager)
    for bad in ("redis", "http://x", "postgres://x/y", ""):
        with pytest.raises(ValueError, match="MEMOTUNE_LOCKS"):
            check_lock_setting(bad)


def test_a_redis_that_goes_away_mid_run_is_one_clear_error(tmp_path):
    """The holder's Redis dies while it holds a lock: the next lock call fails within a
    bound with a LockError naming the lock URL (no hang, no traceback text)."""
    import shutil

    port = _free_port()
    proc = subprocess.Popen([shutil.which("redis-server"), "--port", str(port), "--bind",
                             "127.0.0.1", "--save", "", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    try:
        m = RedisLeaseLockManager(url, lease_s=LEASE)
        deadline = time.monotonic() + 20
        while True:  # wait for the server
            try:
                assert m.acquire_lock(KEY, holder="me", acquire_timeout=1)
                break
            except LockError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        proc.kill()
        proc.wait()
        t0 = time.monotonic()
        with pytest.raises(LockError, match=f"lock server {url}"):
            m.release_lock(KEY, holder="me")
        assert time.monotonic() - t0 < 30
    finally:
        proc.kill()
        proc.wait()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
