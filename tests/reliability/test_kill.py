"""SIGKILL at seeded random points of real `memotune run`s on one shared store.

Each trial starts a run of a TINY variant (intermediate and target seeds from
small sets, so there is always work left to interrupt) and kills its whole
process group at a point drawn from four phases:

- import:  a random delay after the start (Python, torch and Prefect importing);
- compute: a random delay after a pending stage's lock is taken by this run;
- commit:  right after a pending stage's entry folder appears (files uploading);
- record:  right after its manifest appears (before Prefect's result record).

After every kill the store may hold uncommitted garbage, nothing else: every
committed entry verifies. The lock files of killed runs stay in the lock
folder for the next trial to meet. At the end one clean run (seeds 0 and 0,
i.e. the TINY config) completes with the objective of a clean reference run,
reports every stage that was already committed as `cached` with compute_s 0,
and gc leaves a clean store.
"""

from __future__ import annotations

import json
import random
import time
from collections import Counter
from pathlib import Path

import pytest
from faultkit import (
    STAGES,
    damage,
    same_keys,
    stage_keys,
    statuses,
    unclean,
    variant,
    wait_for,
)

from cache.store import ArtifactStore

pytestmark = pytest.mark.slow

PROBE = "a. SIGKILL at random points"
KILLS = 24
SEED = 1234
# rough compute seconds of each TINY stage here, to spread compute-phase kills
COMPUTE_S = {"data_prep": 1.5, "intermediate_finetune": 8.0, "target_finetune": 2.0,
             "evaluate": 0.1}


def _held_by(lock: Path, pid: int) -> bool:
    """The lock file names this pid as holder (FileLockManager writes it on acquire)."""
    try:
        return json.loads(lock.read_text()).get("pid") == pid
    except (OSError, ValueError, AttributeError):
        return False


def _state(store: ArtifactStore, root: Path, keys: list[str]) -> dict[str, str]:
    out = {}
    for k in keys:
        if store.has(k):
            out[k] = "entry+record" if store.read_record(k) is not None else "entry"
        elif (root / "objects" / k).exists():
            out[k] = "garbage"
        else:
            out[k] = "none"
    return out


def test_sigkill_at_random_points_never_damages_the_store(cli, reference, fault_log, tmp_path):
    rng = random.Random(SEED)
    root = tmp_path / "store"
    url = f"file://{root}"
    store = ArtifactStore(url)
    phases: Counter[str] = Counter()
    observed: Counter[str] = Counter()
    kills = trials = 0
    known: dict[str, list[str]] = {}
    failures: list[str] = []
    started = time.monotonic()
    while kills < KILLS:
        trials += 1
        assert trials <= 2 * KILLS, f"only {kills} kills landed in {trials - 1} trials"
        assert time.monotonic() - started < 360, f"only {kills} kills in 6 minutes"
        doc = variant({"intermediate_finetune.seed": rng.choice([0, 1]),
                       "target_finetune.seed": rng.choice([0, 1, 2, 3])})
        keys = stage_keys(doc)
        pending = [i for i, k in enumerate(keys) if not store.has(k)]
        phase = rng.choice(["import", "compute", "commit", "record"]) if pending else "import"
        stage = rng.choice(pending[:2]) if pending else None
        delay = rng.uniform(0.05, 3.5) if phase == "import" else (
            rng.uniform(0, COMPUTE_S[STAGES[stage]]) if phase == "compute" else
            rng.uniform(0, 0.005) if phase == "commit" else 0.0)
        before = _state(store, root, keys)
        proc = cli.start(doc, url)
        try:
            if phase == "import":
                reached = True
            else:
                key = keys[stage]
                trigger = {
                    "compute": lambda k=key, p=proc.pid: _held_by(cli.lock_dir / f"{k}.lock", p),
                    "commit": lambda k=key: (root / "objects" / k).exists(),
                    "record": lambda k=key: (root / "objects" / k / "manifest.json").exists(),
                }[phase]
                reached = wait_for(trigger, proc, timeout=120,
                                   poll=0.005 if phase == "compute" else 0.0005)
                assert reached or not proc.alive(), (
                    f"trial {trials}: run made no progress to {phase} of {STAGES[stage]} in "
                    f"120 s\n{proc.stderr[-2000:]}")
            if reached:
                time.sleep(delay)
            killed = proc.kill()
        finally:
            if proc.alive():
                proc.kill()
        if not killed:  # it finished first: then it must have succeeded
            assert proc.popen.returncode == 0, proc.stderr[-3000:]
            same_keys(proc.summary(), doc)  # else the triggers watched the wrong keys
            continue
        kills += 1
        phases[phase] += 1
        after = _state(store, root, keys)
        changes = sorted({f"{before[k]}->{after[k]}" for k in keys if before[k] != after[k]})
        observed.update(changes or ["no store change"])
        # judged one by one: damage an earlier kill left is not this kill's
        found = damage(url)
        new = {k: v for k, v in found.items() if known.get(k) != v}
        known = found
        fault_log.row(PROBE).trials += 1
        if new:
            failures.append(f"kill {kills} ({phase}, stage {stage}, {delay:.3f} s after the "
                            f"trigger): {new}")
        else:
            fault_log.row(PROBE).held += 1
    fault_log.note(PROBE, f"{trials} runs, kills by trigger {dict(phases)}; store changes "
                          f"{dict(observed)}")
    for failure in failures:
        fault_log.note(PROBE, failure)

    with fault_log.trial("a. clean rerun after the kills"):
        doc = variant()  # = seeds 0 and 0 of the trials; its reference is there already
        keys = stage_keys(doc)
        committed = {k for k in keys if store.has(k)}
        ref = reference.summary(doc)
        done = cli.run(doc, url, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        summary = json.loads(done.stdout)
        same_keys(summary, doc)
        assert summary["objective"] == ref["objective"]
        assert summary["metrics"] == ref["metrics"]
        for row in summary["stages"]:
            if row["key"] in committed:  # entry there, maybe without its record
                assert (row["status"], row["compute_s"]) == ("cached", 0.0), (row, statuses(summary))
        assert {k: v for k, v in damage(url).items() if known.get(k) != v} == {}
        gc = cli.gc(url, "--grace", "0s")  # and whatever the kills left, gc removes
        assert gc.returncode == 0, gc.stdout + gc.stderr
        assert unclean(url) == {}
    assert not failures, "store damaged by a kill:\n" + "\n".join(failures)
    assert len(phases) >= 3, f"kills landed in too few phases: {dict(phases)}"
