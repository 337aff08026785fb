"""g. The S3 server stops answering, or dies, in the middle of a run.

A run of the TINY config on an s3:// store of a moto server of the test's own
(a fresh bucket): once data_prep's manifest is in the bucket (the run is
computing), the server is paused with SIGSTOP, or killed with SIGKILL. The
run must end by itself, non-zero, within S3_BOUND_S + 60 s, and the last line
on stderr must name the store URL. After SIGCONT the paused server's store
holds no damaged entry.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time

import pytest
from faultkit import damage, last_line, variant, wait_for

from cache.store import S3_BOUND_S

pytestmark = pytest.mark.slow

BOUND_S = S3_BOUND_S + 60


def _outage(cli, own_moto, sig: int, kill: bool = True) -> tuple[str, object, float, int | None]:
    bucket = own_moto.new_bucket()
    url = f"s3://{bucket}/store"
    proc = cli.start(variant(), url, env={**cli.env, **own_moto.env})
    try:  # the first entry committed is data_prep's
        assert wait_for(lambda: own_moto.has_manifest(bucket, "store/objects/"), proc,
                        timeout=240, poll=0.05), f"data_prep never committed:\n{proc.stderr[-3000:]}"
        assert proc.alive(), proc.stderr[-3000:]
        own_moto.signal(sig)
        t0 = time.monotonic()
        try:
            rc: int | None = proc.wait(timeout=BOUND_S)
        except subprocess.TimeoutExpired:
            rc = None
        elapsed = time.monotonic() - t0
    finally:
        if kill and proc.alive():
            proc.kill()
    return url, proc, elapsed, rc


def _check(fault_log, probe: str, url: str, proc, elapsed: float, rc: int | None) -> None:
    stderr = proc.stderr
    fault_log.note(probe, f"ended after {elapsed:.0f} s (rc {rc}); "
                          f"{len(stderr.splitlines())} stderr lines; last: {last_line(stderr)!r}")
    assert rc is not None, f"still running {BOUND_S} s after the outage:\n{stderr[-3000:]}"
    assert rc != 0, stderr[-3000:]
    assert url in last_line(stderr), f"last stderr line does not name {url}:\n{stderr[-3000:]}"
    # and it is the run's failure, not a log record printed after it (a lease renewal warning)
    assert not re.match(r"[\d:.]+ \| (WARNING|INFO|DEBUG) ", last_line(stderr)), (
        f"the last stderr line is a log record, not the run's failure:\n{stderr[-3000:]}")


def test_s3_server_paused_mid_run(cli, own_moto, fault_log):
    """Paused S3: the run ends by itself within the bound, naming the store, and
    once the server resumes its store holds no damaged entry."""
    probe = "g. S3 server paused (SIGSTOP)"
    with fault_log.trial(probe):
        url, proc, elapsed, rc = _outage(cli, own_moto, signal.SIGSTOP)
        own_moto.signal(signal.SIGCONT)
        bad = damage(url, own_moto.storage_options)
        fault_log.note(probe, f"damage after resume: {bad or 'none'}")
        _check(fault_log, probe, url, proc, elapsed, rc)
        assert bad == {}


def test_s3_server_killed_mid_run(cli, own_moto, fault_log):
    probe = "g. S3 server killed (SIGKILL)"
    with fault_log.trial(probe):
        url, proc, elapsed, rc = _outage(cli, own_moto, signal.SIGKILL)
        _check(fault_log, probe, url, proc, elapsed, rc)
