"""FileLockManager: Prefect's lock protocol on flock, safe against readers and kills.

The race it replaces: Prefect's file locks are created empty and written in a
second step, so `is_locked` in another process raised `EOF while parsing`
(15,354 of 81,676 calls in a 5 s loop), and a kill between the steps left a
lock that blocked its key forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from cache.locks import FileLockManager

REPO = Path(__file__).resolve().parents[2]
KEY = "a" * 64

# Acquire and release KEY as fast as possible until killed.
CHURN = textwrap.dedent(
    """
    import sys
    from cache.locks import FileLockManager
    m = FileLockManager(sys.argv[1])
    print("churning", flush=True)
    while True:
        m.acquire_lock(sys.argv[2], holder=sys.argv[3])
        m.release_lock(sys.argv[2], holder=sys.argv[3])
    """
)
HOLD = textwrap.dedent(
    """
    import sys, time
    from cache.locks import FileLockManager
    m = FileLockManager(sys.argv[1])
    m.acquire_lock(sys.argv[2], holder="doomed")
    print("held", flush=True)
    time.sleep(600)
    """
)


def _spawn(code: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO,
                            stdout=subprocess.PIPE, text=True)


def test_readers_never_see_a_half_written_lock(tmp_path):
    churners = [_spawn(CHURN, str(tmp_path), KEY, f"h{i}") for i in range(2)]
    try:
        assert all(p.stdout.readline().strip() == "churning" for p in churners)
        m = FileLockManager(tmp_path)
        calls, seen_locked, deadline = 0, 0, time.monotonic() + 3
        while time.monotonic() < deadline or (seen_locked == 0 and calls < 10**7):
            seen_locked += m.is_locked(KEY)  # raised ValueError with Prefect's manager
            calls += 1
        assert all(p.poll() is None for p in churners), "a churning process died"
        assert calls > 1000 and seen_locked > 0
    finally:
        for p in churners:
            p.kill()
            p.wait()


def test_a_killed_holder_frees_its_key_at_once(tmp_path):
    holder = _spawn(HOLD, str(tmp_path), KEY)
    try:
        assert holder.stdout.readline().strip() == "held"
        m = FileLockManager(tmp_path)
        assert m.is_locked(KEY)
        assert not m.acquire_lock(KEY, holder="me", acquire_timeout=0.3)
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
        assert m.acquire_lock(KEY, holder="me", acquire_timeout=5)
        assert m.is_lock_holder(KEY, "me") and not m.is_lock_holder(KEY, "doomed")
        m.release_lock(KEY, holder="me")
        assert not m.is_locked(KEY)
    finally:
        holder.kill()
        holder.wait()


def test_empty_garbage_and_ownerless_lock_files_block_nothing(tmp_path):
    m = FileLockManager(tmp_path)
    for content in (b"", b"{not json", b'{"holder": "x", "pid": 999999999}'):
        (tmp_path / f"{KEY}.lock").write_bytes(content)
        assert not m.is_locked(KEY)
        assert m.acquire_lock(KEY, holder="me", acquire_timeout=1)
        m.release_lock(KEY, holder="me")


def test_one_holder_at_a_time_within_a_process(tmp_path):
    a, b = FileLockManager(tmp_path), FileLockManager(tmp_path)
    assert a.acquire_lock(KEY, holder="a")
    assert a.acquire_lock(KEY, holder="a")  # re-entrant for its holder
    assert not b.acquire_lock(KEY, holder="b", acquire_timeout=0.2)
    assert not a.acquire_lock(KEY, holder="b", acquire_timeout=0.2)
    assert b.is_locked(KEY) and not b.wait_for_lock(KEY, timeout=0.2)
    a.release_lock(KEY, holder="a")
    assert b.wait_for_lock(KEY, timeout=1) and b.acquire_lock(KEY, holder="b", acquire_timeout=1)
    b.release_lock(KEY, holder="b")
