"""Scale-out on real servers: a Prefect server on Postgres, Redis locks, an S3
store (moto) and two process workers that share nothing but the network.

The cluster is deployments/cluster.py, the same harness users start with
`python deployments/cluster.py up`. Every server listens on loopback only.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import redis
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.settings import PREFECT_API_URL, temporary_settings

from cache.store import ArtifactStore
from deployments.cluster import REPO, Cluster, running
from flows.config import load_config, set_dotted
from flows.plan import stage_keys
from tests.flows.conftest import TINY

LEASE_S = 10.0  # renewed every LEASE_S / 3: room for a starved CI machine
DEPLOYMENT = "memotune-pipeline/offline-default"


def _config(**changes: Any) -> dict[str, Any]:
    doc = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        set_dotted(doc, dotted.replace("__", "."), value)
    return load_config(doc=doc).model_dump(mode="json")


# three configurations that share prefixes: B shares A's first three stages'
# inputs up to target_finetune, C shares only data_prep with A and B
CONFIGS = {
    "A": _config(),
    "B": _config(target_finetune__seed=1),
    "C": _config(intermediate_finetune__seed=1),
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Cluster:
    root = tmp_path_factory.mktemp("cluster")
    with running(root, workers=2, worker_env={"MEMOTUNE_LOCK_LEASE_S": str(LEASE_S)}) as c:
        yield c


@pytest.fixture
def on_cluster(cluster: Cluster, monkeypatch):
    for k, v in cluster.client_env().items():
        monkeypatch.setenv(k, v)
    with temporary_settings(updates={PREFECT_API_URL: cluster.api_url}):
        yield cluster


def _submit(config: dict[str, Any], store_url: str, name: str) -> str:
    fr = run_deployment(DEPLOYMENT, parameters={"config": config, "store_url": store_url,
                                                "progress": False},
                        flow_run_name=name, timeout=0)
    return str(fr.id)


def _wait(ids: list[str], timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=ids)))
            if len(runs) == len(ids) and all(r.state and r.state.is_final() for r in runs):
                return runs
            if time.monotonic() > deadline:
                states = {r.name: r.state.name if r.state else None for r in runs}
                raise AssertionError(f"flow runs not finished after {timeout:.0f} s: {states}")
            time.sleep(1)


def _why_not_completed(cluster: Cluster, runs: list[Any]) -> str:
    """Each unfinished run's state message and the worker log lines that name it: a
    failure on a loaded CI machine must say what went wrong, not only that it did."""
    lines = []
    logs = {p.name: p.read_text(errors="replace").splitlines()
            for p in cluster.root.glob("worker-*.log")}
    for r in runs:
        if r.state and r.state.is_completed():
            continue
        state = f"{r.state.name}: {r.state.message}" if r.state else "no state"
        lines.append(f"{r.name}: {state}")
        for name, log in logs.items():
            hits = [i for i, line in enumerate(log) if r.name in line or str(r.id) in line]
            if hits:
                lines += [f"  {name}: {line}" for line in log[hits[0]:hits[-1] + 40][-60:]]
    return "\n".join(lines)


def _computed_task_runs(ids: list[str]) -> Counter:
    """task run name (stage[key prefix]) -> how many runs computed it, per Prefect's API."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids)))
    return Counter(t.name for t in tasks if t.state and t.state.name == "Completed")


def _reference_objectives(cluster: Cluster, tmp_path: Path) -> dict[str, float]:
    """Each config run sequentially, alone, on a local store (same thread count as workers)."""
    out = {}
    env = {**os.environ, **cluster.client_env(), "HOME": str(tmp_path / "home"),
           "OMP_NUM_THREADS": "1", "MEMOTUNE_LOCKS": "file"}
    for name, config in CONFIGS.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(config))
        done = subprocess.run([str(Path(sys.executable).parent / "memotune"), "run", str(path),
                               "--store", str(tmp_path / "ref-store"), "--json"],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        out[name] = json.loads(done.stdout)["objective"]
    return out


def test_eight_runs_on_two_workers_compute_each_key_once(on_cluster, tmp_path):
    cluster = on_cluster
    plan = ["A", "B", "C", "A", "B", "C", "A", "B"]
    ids = [_submit(CONFIGS[c], cluster.store_url, f"multi-{i}-{c}") for i, c in enumerate(plan)]
    runs = _wait(ids, timeout=900)
    assert all(r.state.is_completed() for r in runs), _why_not_completed(cluster, runs)

    store = ArtifactStore(cluster.store_url)
    records = [store.get_json(n) for n in store.list_docs("runs")]
    records = [r for r in records if r["run"] in ids]
    assert len(records) == 8
    computed = Counter(s["key"] for r in records for s in r["stages"] if s["status"] == "computed")
    distinct = {k for c in set(plan) for _, k, _ in stage_keys(load_config(doc=CONFIGS[c]))}
    assert set(computed) == distinct and set(computed.values()) == {1}, computed
    prefect_computed = _computed_task_runs(ids)
    assert len(prefect_computed) == len(distinct) and set(prefect_computed.values()) == {1}
    workers = {r.infrastructure_pid for r in runs}
    assert len(workers) >= 2, "both workers should have run flow runs"

    reference = _reference_objectives(cluster, tmp_path)
    by_run = {r["run"]: r for r in records}
    for fid, c in zip(ids, plan, strict=True):  # as if each had run alone, in sequence
        assert by_run[fid]["objective"] == pytest.approx(reference[c], abs=1e-9), c
    assert all(v == [] for v in store.verify_all().values()), store.verify_all()


def _descendants(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-e", "-o", "pid=,ppid="], capture_output=True, text=True).stdout
    children: dict[int, list[int]] = {}
    for line in out.splitlines():
        p, pp = map(int, line.split())
        children.setdefault(pp, []).append(p)
    todo, found = [pid], []
    while todo:
        for c in children.get(todo.pop(), []):
            found.append(c)
            todo.append(c)
    return found


def test_a_killed_worker_holding_a_lock_frees_it_after_the_lease(on_cluster):
    """Worker 0 takes a stage's lock and is SIGKILLed with its flow run; the lock
    expires within one lease and worker 1 computes the stage."""
    cluster = on_cluster
    config = _config(intermediate_finetune__epochs=3, intermediate_finetune__seed=7)
    key = stage_keys(load_config(doc=config))[1][1]  # intermediate_finetune
    lock = f"lock:{key}"
    r = redis.Redis.from_url(cluster.redis_url)
    os.killpg(cluster.procs["worker-1"].pid, signal.SIGSTOP)  # only worker 0 picks it up
    try:
        _submit(config, cluster.store_url, "doomed")
        deadline = time.monotonic() + 300
        while (dead_token := r.get(lock)) is None:
            assert time.monotonic() < deadline, "worker 0 never took the intermediate lock"
            time.sleep(0.05)
        worker = cluster.procs["worker-0"].pid
        for pid in [worker, *_descendants(worker)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        killed_at = time.monotonic()
    finally:
        os.killpg(cluster.procs["worker-1"].pid, signal.SIGCONT)
    rescue = _submit(config, cluster.store_url, "rescue")
    gone_at = None
    while True:
        token = r.get(lock)
        if gone_at is None and token != dead_token:
            gone_at = time.monotonic()
        if token not in (None, dead_token):
            break  # worker 1 holds it now
        assert time.monotonic() - killed_at < 300, "worker 1 never took the lock"
        time.sleep(0.05)
    assert gone_at - killed_at <= LEASE_S + 1.5, f"lock outlived its lease: {gone_at - killed_at:.1f} s"
    (run,) = _wait([rescue], timeout=600)
    assert run.state.is_completed(), _why_not_completed(cluster, [run])
    store = ArtifactStore(cluster.store_url)
    rec = store.get_json(f"runs/{rescue}.json")
    assert {s["name"]: s["status"] for s in rec["stages"]}["intermediate_finetune"] == "computed"
    problems = {k: v for k, v in store.verify_all().items() if v}
    assert all(v == ["no manifest (uncommitted garbage)"] for v in problems.values()), problems


def test_a_parallel_study_on_two_workers_runs_each_trial_once(on_cluster, tmp_path):
    """`memotune tune --deployment ... --parallel 2` with two workers on Redis locks."""
    import yaml

    cluster = on_cluster
    doc = copy.deepcopy(TINY)
    doc["search"] = {"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 3},
                                         "seed": {"type": "int", "low": 0, "high": 50}}}
    cfg = tmp_path / "study.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    store_url = f"{cluster.store_url}-study"
    env = {**os.environ, **cluster.client_env(), "HOME": str(tmp_path / "home")}
    done = subprocess.run([str(Path(sys.executable).parent / "memotune"), "tune", str(cfg),
                           "--store", store_url, "--study", "spread", "--tuner", "random",
                           "--warmup", "4", "--max-trials", "4", "--deployment", DEPLOYMENT,
                           "--parallel", "2", "--json", "--plot", str(tmp_path / "p.png")],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = json.loads(done.stdout)["trials"]
    assert sorted(t["id"] for t in trials) == [0, 1, 2, 3]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 4
    assert all(t["objective"] is not None for t in trials)
    store = ArtifactStore(store_url)
    study = store.get_json("studies/spread/study.json")
    assert len(study["trials"]) == 4 and study["tuner_state"]["pending"] == []
    with get_client(sync_client=True) as client:
        runs = [client.read_flow_run(t["flow_run_id"]) for t in trials]
    assert all(r.state.is_completed() for r in runs)
    # each trial ran exactly once: one flow run per trial, each recorded once in the store
    records = [store.get_json(n) for n in store.list_docs("runs")]
    assert sorted(r["run"] for r in records) == sorted(str(r.id) for r in runs)
