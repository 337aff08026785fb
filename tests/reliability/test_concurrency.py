"""Concurrent runs on one store, and lock files that a crash (or anyone) left behind.

b. Eight `memotune run`s at once on one file:// store, four of config A and
   four of config B (B differs only in target_finetune.seed, so both share the
   data_prep and intermediate_finetune entries): all succeed, and each of the
   six distinct stage keys is computed by exactly one of them.
c. Lock files planted in the runs' lock folder before a run (empty, garbage,
   naming a dead pid, Prefect's own format naming a holder that never
   releases): the run goes through every one of them and finishes in bounded
   time with the reference objective.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections import Counter

import pytest
from faultkit import damage, same_keys, stage_keys, statuses, unclean, variant

pytestmark = pytest.mark.slow

RUNS = 8
LOCK_BOUND_S = 120


def test_eight_concurrent_runs_compute_each_stage_once(cli, reference, fault_log, tmp_path):
    configs = [variant(), variant({"target_finetune.seed": 1})]
    refs = [reference.summary(doc) for doc in configs]  # before: not competing for the cores
    url = f"file://{tmp_path / 'store'}"
    with fault_log.trial("b. 8 concurrent runs (2 configs)"):
        procs = [cli.start(configs[i % 2], url) for i in range(RUNS)]
        deadline = time.monotonic() + 500
        try:
            for p in procs:
                p.wait(timeout=max(1.0, deadline - time.monotonic()))
        finally:
            for p in procs:
                if p.alive():
                    p.kill()
        failed = {i: p.stderr[-2000:] for i, p in enumerate(procs) if p.popen.returncode != 0}
        assert not failed, failed
        computed: Counter[str] = Counter()
        keys: set[str] = set()
        for i, p in enumerate(procs):
            summary = p.summary()
            same_keys(summary, configs[i % 2])
            assert summary["metrics"] == refs[i % 2]["metrics"], (i, statuses(summary))
            for row in summary["stages"]:
                keys.add(row["key"])
                computed[row["key"]] += row["status"] == "computed"
        assert len(keys) == 6
        assert {k: computed[k] for k in keys} == dict.fromkeys(keys, 1)
        assert damage(url) == {} and unclean(url) == {}


def test_planted_lock_files_do_not_block_a_run(cli, reference, warm_store, fault_log):
    # every stage computes, so each takes its lock (a hit takes none: it only reads)
    doc = variant({"data_prep.seed": 1})
    ref = reference.summary(doc)
    keys = stage_keys(doc)
    dead = subprocess.Popen(["true"])
    dead.wait()
    cli.lock_dir.mkdir(parents=True)
    locks = {kind: cli.lock_dir / f"{key}.lock" for kind, key in zip(
        ("empty", "garbage", "dead pid", "prefect format, never expires"), keys, strict=True)}
    planted = {
        "empty": b"",  # a holder killed between creating and writing it
        "garbage": b"\x00\x9f{holder: \xff not json",
        "dead pid": json.dumps({"holder": "killed-run", "host": socket.gethostname(),
                                "pid": dead.pid, "since": time.time() - 60}).encode(),
        "prefect format, never expires": json.dumps(
            {"holder": "killed-run", "expiration": None,
             "path": str(locks["prefect format, never expires"])}).encode(),
    }
    for kind, data in planted.items():
        locks[kind].write_bytes(data)

    t0 = time.monotonic()
    try:
        done = cli.run(doc, warm_store, timeout=LOCK_BOUND_S)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"run blocked by planted lock files for {LOCK_BOUND_S} s: "
                             f"{(e.stderr or b'')[-2000:]!r}") from None
    elapsed = time.monotonic() - t0
    fault_log.note("c. lock file: empty", f"run took {elapsed:.1f} s with all four planted")
    for kind, lock in locks.items():
        with fault_log.trial(f"c. lock file: {kind}"):
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            same_keys(summary, doc)
            assert summary["metrics"] == ref["metrics"]
            assert set(statuses(summary).values()) == {"computed"}
            # the run took this very lock: it replaced the planted content or removed the file
            assert not lock.exists() or lock.read_bytes() != planted[kind], kind
