"""f. `memotune cache gc` while a run uses the store: it never removes what the run uses.

A run of a fresh target seed (data_prep and intermediate_finetune cached, target
and evaluate computed) holds a lease on its four keys. While its lease exists,
`cache gc --max-size 1KB` and `cache gc --older-than 1s --grace 0s` run back to
back, up to four times: the run still finishes with the reference objective and every one of its
entries is there afterwards. Once it has ended, the same gc may remove them.
"""

from __future__ import annotations

import re

import pytest
from faultkit import damage, same_keys, stage_keys, statuses, variant, wait_for

from cache.store import ArtifactStore

pytestmark = pytest.mark.slow

GCS = [("--max-size", "1KB"), ("--older-than", "1s", "--grace", "0s")]
MAX_GCS = 4  # each is a CLI process: more would mostly slow the run down
REMOVED = re.compile(r"removed (\d+) uncommitted, (\d+) entries")


def _removed_entries(stdout: str) -> int:
    m = REMOVED.search(stdout)
    assert m, stdout
    return int(m.group(2))


def test_gc_during_a_run_removes_nothing_it_uses(cli, reference, warm_store, fault_log):
    doc = variant({"target_finetune.seed": 2, "target_finetune.epochs": 3})
    ref = reference.summary(doc)
    keys = stage_keys(doc)
    store = ArtifactStore(warm_store)
    unleased = [m.key for m in store.ls()]  # the TINY run's: gc may take those meanwhile

    def leased() -> bool:
        return bool(store.list_docs("leases"))

    proc = cli.start(doc, warm_store)
    try:
        assert wait_for(leased, proc, timeout=120, poll=0.05), proc.stderr[-3000:]
        landed, removed, log = 0, 0, []
        while proc.alive() and len(log) < MAX_GCS:
            args = GCS[len(log) % 2]
            was_leased = leased()
            gc = cli.gc(warm_store, *args)
            log.append(f"{' '.join(args)}: {gc.stdout.strip()}")
            assert gc.returncode == 0, gc.stdout + gc.stderr
            if was_leased and leased():  # this gc ran while the run held its lease
                landed += 1
                removed += _removed_entries(gc.stdout)
        rc = proc.wait(timeout=300)
    finally:
        if proc.alive():
            proc.kill()
    with fault_log.trial("f. gc during a run") as row:
        row.notes.append(f"{landed} of {len(log)} gc calls during the lease")
        assert rc == 0, proc.stderr[-3000:]
        summary = proc.summary()
        same_keys(summary, doc)
        assert summary["objective"] == ref["objective"]
        assert summary["metrics"] == ref["metrics"]
        assert statuses(summary) == {"data_prep": "cached", "intermediate_finetune": "cached",
                                     "target_finetune": "computed", "evaluate": "computed"}
        assert landed >= 2, log  # the probe really overlapped the run
        assert removed >= 1, log  # gc was working meanwhile: it took unleased entries
        assert all(store.has(k) for k in keys), log
        assert damage(warm_store) == {}
        assert not leased()  # the run released its lease
        after = cli.gc(warm_store, "--max-size", "1KB")
        assert after.returncode == 0 and _removed_entries(after.stdout) >= 1, after.stdout
        assert not all(store.has(k) for k in keys)
        assert set(unleased) - {m.key for m in store.ls()}  # the unleased ones went
