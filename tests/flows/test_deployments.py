"""deployments/prefect.yaml points at real flows with parameters they accept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
from prefect.flows import load_flow_from_entrypoint

from cache.store import ArtifactStore
from deployments.cluster import stop_group
from flows.config import load_config
from flows.tune import tune_flow

ROOT = Path(__file__).parents[2]
# A pipeline deployment whose runs each wait for a concurrent one (see barrier_flow.py).
PAIRED_ENTRYPOINT = "tests/flows/barrier_flow.py:paired_pipeline_flow"
PAIRED_FLOW = "memotune-pipeline-paired"


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
    that keeps two trials in flight as flow runs on that work pool.

    That the two trials overlap is not left to timing (process start-up vs training
    time): they run as a deployment of tests/flows/barrier_flow.py, with the shipped
    deployment's pull steps, pool and parameters, whose runs each wait (bounded) until
    the other one is running before they run the pipeline. The study is then resumed
    on the shipped `offline-default` deployment for its last trial."""
    prefect = [sys.executable, "-m", "prefect"]
    store_url = str(tmp_path / "store")
    env = dict(os.environ, PREFECT_API_URL=prefect_api, MEMOTUNE_HOME=str(ROOT),
               MEMOTUNE_STORE=store_url, HOME=str(tmp_path / "home"),
               PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_SERVER_ANALYTICS_ENABLED="false")
    shipped = ROOT / "deployments" / "prefect.yaml"
    doc = yaml.safe_load(shipped.read_text())
    [default] = [d for d in doc["deployments"] if d["name"] == "offline-default"]
    paired_yaml = tmp_path / "paired.yaml"  # the shipped project, one paired deployment
    paired_yaml.write_text(yaml.safe_dump({**doc, "deployments": [{
        **default, "name": "paired", "entrypoint": PAIRED_ENTRYPOINT,
        "description": "offline-default, each run waiting for a concurrent one"}]}))
    for cmd in (["work-pool", "create", "memotune-pool", "--type", "process", "--overwrite"],
                ["--no-prompt", "deploy", "--prefect-file", str(shipped),
                 "--name", "offline-default"],
                ["--no-prompt", "deploy", "--prefect-file", str(paired_yaml),
                 "--name", "paired"]):
        done = subprocess.run(prefect + cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    worker_log = tmp_path / "worker.log"
    with worker_log.open("wb") as out:
        worker = subprocess.Popen(prefect + ["worker", "start", "--pool", "memotune-pool"],
                                  env=env, cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT,
                                  start_new_session=True)
    tiny["search"] = {"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 3},
                                          "optimizer.lr": {"type": "float", "low": 1e-4,
                                                           "high": 1e-2, "log": True}}}
    cfg = load_config(doc=tiny).model_dump(mode="json")
    try:
        tune_flow(store_url, "pool", config=cfg, tuner="random", budget=1e6, warmup=3,
                  progress=False, max_trials=2, deployment=f"{PAIRED_FLOW}/paired",
                  parallel=2)
        result = tune_flow(store_url, "pool", budget=1e6, progress=False, resume=True,
                           max_trials=3, deployment="memotune-pipeline/offline-default",
                           parallel=2)
    except Exception as e:  # a trial's flow run failed (e.g. no concurrent run): show why
        errors = [ln for ln in worker_log.read_text(errors="replace").splitlines()
                  if "| ERROR" in ln]
        raise AssertionError("worker log errors:\n" + "\n".join(errors[-20:])) from e
    finally:
        stop_group(worker)  # a graceful worker shutdown took over 60 s on a loaded CI machine
    trials = result["trials"]
    assert sorted(t["id"] for t in trials) == [0, 1, 2]
    assert len({json.dumps(t["params"], sort_keys=True) for t in trials}) == 3  # distinct
    assert all(t["objective"] is not None and t["flow_run"] for t in trials)
    doc = ArtifactStore(store_url).get_json("studies/pool/study.json")
    assert len(doc["trials"]) == 3 and doc["tuner_state"]["pending"] == []
    names = {t["flow_run"]: t["id"] for t in trials}
    with get_client(sync_client=True) as client:
        deps = [client.read_deployment_by_name(f"{PAIRED_FLOW}/paired").id,
                client.read_deployment_by_name("memotune-pipeline/offline-default").id]
        runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
            id=DeploymentFilterId(any_=deps))) if r.name in names]
    paired, default = ([r for r in runs if r.deployment_id == d] for d in deps)
    assert sorted(names[r.name] for r in paired) == [0, 1]
    assert [names[r.name] for r in default] == [2]  # the shipped deployment ran for real
    assert all(r.state.is_completed() for r in paired + default)
    first, second = sorted(paired, key=lambda r: r.start_time)
    assert second.start_time < first.end_time  # two trials really ran at the same time
