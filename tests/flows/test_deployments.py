"""deployments/prefect.yaml points at real flows with parameters they accept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.flows import load_flow_from_entrypoint

from cache.store import ArtifactStore
from flows.config import load_config
from flows.tune import tune_flow

ROOT = Path(__file__).parents[2]


def test_every_deployment_entrypoint_loads_and_accepts_its_parameters(monkeypatch):
    monkeypatch.chdir(ROOT)
    doc = yaml.safe_load((ROOT / "deployments" / "prefect.yaml").read_text())
    assert {d["name"] for d in doc["deployments"]} == {"offline-default", "nightly-tune"}
    for dep in doc["deployments"]:
        fl = load_flow_from_entrypoint(dep["entrypoint"])
        params = {k: ("file:///tmp/x" if isinstance(v, str) and "{{" in v else v)
                  for k, v in dep["parameters"].items()}
        fl.validate_parameters(params)  # raises on unknown or ill-typed parameters
        assert dep["work_pool"]["name"] == "memotune-pool"


def test_tune_runs_parallel_trials_on_a_work_pool_worker(prefect_api, tiny, tmp_path):
    """The shipped prefect.yaml deployed for real, one process worker, a tune study
    that keeps two trials in flight as flow runs of that deployment."""
    prefect = [sys.executable, "-m", "prefect"]
    store_url = str(tmp_path / "store")
    env = dict(os.environ, PREFECT_API_URL=prefect_api, MEMOTUNE_HOME=str(ROOT),
               MEMOTUNE_STORE=store_url, HOME=str(tmp_path / "home"),
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    for cmd in (["work-pool", "create", "memotune-pool", "--type", "process", "--overwrite"],
                ["--no-prompt", "deploy", "--prefect-file", "deployments/prefect.yaml",
                 "--name", "offline-default"]):
        done = subprocess.run(prefect + cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "memotune-pool"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    tiny["search"] = {"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 3},
                                          "optimizer.lr": {"type": "float", "low": 1e-4,
                                                           "high": 1e-2, "log": True}}}
    cfg = load_config(doc=tiny).model_dump(mode="json")
    try:
        result = tune_flow(store_url, "pool", config=cfg, tuner="random", budget=1e6, warmup=3,
                           progress=False, max_trials=3,
                           deployment="memotune-pipeline/offline-default", parallel=2)
    finally:
        os.killpg(worker.pid, signal.SIGTERM)
        worker.wait(timeout=60)
    trials = result["trials"]
    assert sorted(t["id"] for t in trials) == [0, 1, 2]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3  # distinct
    assert all(t["objective"] is not None and t["flow_run"] for t in trials)
    doc = ArtifactStore(store_url).get_json("studies/pool/study.json")
    assert len(doc["trials"]) == 3 and doc["tuner_state"]["pending"] == []
    with get_client(sync_client=True) as client:
        dep = client.read_deployment_by_name("memotune-pipeline/offline-default")
        runs = [r for r in client.read_flow_runs(limit=50) if r.deployment_id == dep.id
                and r.name in {t["flow_run"] for t in trials}]
    assert len(runs) == 3 and all(r.state.is_completed() for r in runs)
    first, second = sorted(runs, key=lambda r: r.start_time)[:2]
    assert second.start_time < first.end_time  # two trials really ran at the same time
