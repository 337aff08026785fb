"""Fixtures for the dashboard tests: a synthetic store (no training), a server in a thread."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from cache.store import ArtifactStore


def _key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _commit(store: ArtifactStore, tmp: Path, key: str, stage: str, size: int,
            compute_s: float, upstream: dict[str, str]) -> None:
    d = tmp / key
    d.mkdir(parents=True)
    (d / "out.bin").write_bytes(os.urandom(size))
    store.commit(key, d, stage=stage, compute_s=compute_s,
                 meta={"metrics": {}, "meta": {}, "params": {}, "upstream": upstream})


STAGES = ("data_prep", "intermediate_finetune", "target_finetune", "evaluate")


@pytest.fixture
def synthetic_store(tmp_path: Path) -> dict[str, Any]:
    """A store with 4 committed chains, 3 runs recorded, a 3-trial study (one trial
    fully cached, a conditional param in one trial) and a running study with no trials."""
    store = ArtifactStore.open(str(tmp_path / "store"))
    paths = [("d", "i1", "t1", "e1"), ("d", "i1", "t2", "e2"), ("d", "i2", "t3", "e3")]
    keys: dict[str, str] = {}
    for chain in paths:
        up: dict[str, str] = {}
        for stage, name in zip(STAGES, chain, strict=True):
            keys.setdefault(name, _key(name))
            if not store.has(keys[name]):
                _commit(store, tmp_path / "src", keys[name], stage, 1000 + 10 * len(keys), 5.0,
                        dict(up))
            up[stage] = keys[name]
    computed = {"d": 2.0, "i1": 30.0, "i2": 28.0, "t1": 10.0, "t2": 11.0, "t3": 9.0,
                "e1": 0.5, "e2": 0.5, "e3": 0.5}

    def rows(chain: tuple[str, ...], cached: set[str]) -> list[dict[str, Any]]:
        out = []
        for stage, name in zip(STAGES, chain, strict=True):
            hit = name in cached
            out.append({"name": stage, "key": keys[name], "status": "cached" if hit else "computed",
                        "compute_s": 0.0 if hit else computed[name], "load_s": 0.2 if hit else 0.0,
                        "saved_s": computed[name] - 0.2 if hit else 0.0})
        return out

    plan = [(paths[0], set()), (paths[1], {"d", "i1"}), (paths[0], {"d", "i1", "t1", "e1"}),
            (paths[2], {"d"})]
    trials, spent = [], 0.0
    run_ids = []
    for i, (chain, cached) in enumerate(plan[:3]):
        stage_rows = rows(chain, cached)
        cost = sum(r["compute_s"] + r["load_s"] for r in stage_rows)
        spent += cost
        rid = str(uuid.uuid4())
        run_ids.append(rid)
        params = [{"enabled": True}, {"optimizer.lr": 0.001234567 * (i + 1), "optimizer.mode": "adamw"}]
        active = [dict(p) for p in params]
        if i == 1:
            params[1]["optimizer.mode"] = "hypergradient"
            params[1]["optimizer.hypergrad_lr"] = 3.3333e-6
            active = [dict(p) for p in params]
        trials.append({"id": i, "params": params, "active_params": active, "prefix_depth": 0,
                       "objective": 0.6 + 0.1 * i, "metrics": {}, "stages": stage_rows,
                       "adapted": {}, "tuner_costs": [cost * 0.6, cost * 0.4],
                       "tuner_cached": [False, False], "spent": spent,
                       "flow_run": f"demo-{i}", "flow_run_id": rid})
        store.put_json(f"runs/{rid}.json", {
            "run": rid, "flow_run_name": f"demo-{i}", "config": "offline-default",
            "started": time.time() - 100 + i, "ended": time.time() - 90 + i,
            "objective": 0.6 + 0.1 * i, "stages": stage_rows})
    # a run outside any study (reuses d), recorded without a Prefect id
    other = rows(paths[2], {"d"})
    store.put_json("runs/0123456789abcdef0123456789abcdef.json", {
        "run": "0123456789abcdef0123456789abcdef", "flow_run_name": None, "config": "x",
        "started": time.time() - 50, "ended": time.time() - 40, "objective": 0.5, "stages": other})
    store.put_json("studies/demo/study.json", {
        "study": "demo", "config": {"objective": "accuracy", "search": {
            "intermediate_finetune": {}, "target_finetune": {}}},
        "tuner": "eeipu", "budget": 500.0, "warmup": 2, "seed": 0, "trials": trials,
        "tuner_state": {"anything": [1, 2, 3]}, "stage_names": ["intermediate_finetune",
                                                               "target_finetune"],
        "status": "finished", "ended_reason": "finished: max_trials=3 reached",
        "updated": time.time() - 30})
    store.put_json("studies/fresh/study.json", {
        "study": "fresh", "config": None, "tuner": "random", "budget": 100.0, "warmup": 1,
        "seed": 0, "trials": [], "tuner_state": None, "status": "running",
        "updated": time.time()})
    return {"store": store, "keys": keys, "trials": trials, "run_ids": run_ids}
