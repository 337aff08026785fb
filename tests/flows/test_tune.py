"""The tune flow on the real pipeline (tiny), through a real Prefect API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cache.store import ArtifactStore
from flows.config import load_config
from flows.fidelity import study_space
from flows.plan import stage_keys
from flows.run_records import StageRun, StudyResult
from flows.tune import StageGroups, plot_progress, tune_flow
from stages.pipeline import STAGE_NAMES
from tuners import Candidate, SearchSpace, make_tuner

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
SEARCH = {
    "intermediate_finetune": {"enabled": {"type": "categorical", "choices": [True, False]}},
    "target_finetune": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
                        "optimizer.mode": {"type": "categorical",
                                           "choices": ["adamw", "hypergradient"]}},
}


def test_stage_groups_fold_untuned_stages_into_tuned_ones():
    space = SearchSpace.from_config(SEARCH, STAGE_NAMES)
    g = StageGroups.of(space)
    assert g.groups == ((0, 1), (2, 3))
    rows = [StageRun(name=f"s{i}", key="k", compute_s=c, load_s=lo, status=s)
            for i, (c, lo, s) in enumerate([(0, 0.1, "cached"), (5, 0, "computed"),
                                            (2, 0, "computed"), (0.5, 0, "computed")])]
    assert g.fold(rows) == ([5.1, 2.5], [False, False])


def test_tune_runs_real_trials_saves_the_study_and_reuses_prefixes(prefect_api, tiny, store_url, tmp_path):
    tiny["search"] = SEARCH
    cfg = load_config(doc=tiny)
    result = tune_flow(store_url, "t1", config=cfg.model_dump(mode="json"), tuner="random",
                       budget=1e6, warmup=2, seed=0, progress=False,
                       lock_dir=str(tmp_path / "locks"), max_trials=4)
    trials = result["trials"]
    assert len(trials) == 4
    assert result["spent"] == pytest.approx(sum(sum(t["tuner_costs"]) for t in trials))
    assert result["best"]["objective"] == max(t["objective"] for t in trials)
    # data_prep never changes, and intermediate has only 2 possible values
    assert all(t["stages"][0]["status"] == "cached" for t in trials[1:])
    assert sum(t["stages"][1]["status"] == "cached" for t in trials) >= 2
    doc = ArtifactStore(store_url).get_json("studies/t1/study.json")
    assert [t["id"] for t in doc["trials"]] == list(range(len(trials)))
    png = plot_progress(StudyResult.model_validate(result), tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="exists"):
        tune_flow(store_url, "t1", config=cfg.model_dump(mode="json"), tuner="random",
                  budget=25.0, progress=False)


@pytest.mark.slow
def test_killed_study_resumes_with_every_observation_once(tiny, cli_env, tmp_path):
    tiny["search"] = SEARCH
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny))
    store_url = str(tmp_path / "store")
    store = ArtifactStore(store_url)
    args = [MEMOTUNE, "tune", str(cfg_path), "--store", store_url, "--tuner", "eeipu",
            "--warmup", "2", "--budget", "1000000", "--max-trials", "5", "--study", "k1", "--json",
            "--plot", str(tmp_path / "k1.png")]
    proc = subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while True:  # kill once two trials are saved
            doc = store.get_json("studies/k1/study.json")
            if doc and len(doc["trials"]) >= 2:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    saved = len(store.get_json("studies/k1/study.json")["trials"])
    resumed = subprocess.run([MEMOTUNE, "tune", "--store", store_url, "--resume", "k1",
                              "--max-trials", "5", "--json", "--plot", str(tmp_path / "k1.png")],
                             env=cli_env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    result = json.loads(resumed.stdout)
    ids = [t["id"] for t in result["trials"]]
    assert ids == list(range(5)) and saved < 5
    assert (tmp_path / "k1.png").exists()


def test_default_search_tunes_adam_hd_rate_only_when_the_mode_is_hypergradient():
    cfg = load_config(None)
    space = SearchSpace.from_config(cfg.search, STAGE_NAMES)
    inter = {"enabled": True, "epochs": 4, "optimizer.lr": 1e-3}

    def config(mode: str, hd_lr: float):
        target = {"epochs": 10, "optimizer.mode": mode, "optimizer.lr": 1e-3,
                  "optimizer.hypergrad_lr": hd_lr}
        params = [space.canonicalize(0, inter), space.canonicalize(1, target)]
        return study_space(cfg, "eeipu").config(cfg, Candidate(params=params, id=0))

    hd = config("hypergradient", 3e-6).target_finetune.optimizer
    assert hd["mode"] == "hypergradient" and hd["hypergrad_lr"] == 3e-6 and hd["lr"] == 1e-3
    adamw_a, adamw_b = config("adamw", 3e-6), config("adamw", 1e-5)  # inactive: dropped
    assert "hypergrad_lr" not in adamw_a.target_finetune.optimizer
    assert stage_keys(adamw_a) == stage_keys(adamw_b)
    assert stage_keys(config("hypergradient", 1e-5)) != stage_keys(config("hypergradient", 3e-6))


def test_resume_runs_the_candidates_that_were_in_flight_first(prefect_api, tiny, store_url, tmp_path):
    tiny["search"] = SEARCH
    cfg = load_config(doc=tiny)
    space = SearchSpace.from_config(cfg.search, STAGE_NAMES)
    t = make_tuner("random", space, budget=1e6, seed=0, warmup=2)
    in_flight = t.ask()  # asked, dispatched, never told: the study stopped meanwhile
    doc = {"study": "r1", "config": cfg.model_dump(mode="json"), "tuner": "random",
           "budget": 1e6, "warmup": 2, "seed": 0, "trials": [], "tuner_state": t.state_dict()}
    ArtifactStore(store_url).put_json("studies/r1/study.json", doc)
    result = tune_flow(store_url, "r1", resume=True, progress=False, max_trials=2,
                       lock_dir=str(tmp_path / "locks"))
    trials = result["trials"]
    assert [x["id"] for x in trials] == [in_flight.id, in_flight.id + 1]
    assert trials[0]["params"] == in_flight.params
    saved = ArtifactStore(store_url).get_json("studies/r1/study.json")
    assert saved["tuner_state"]["pending"] == []
