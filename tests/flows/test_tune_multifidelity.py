"""Multi-fidelity studies on the real pipeline: rungs set a training stage's epochs (the
target's by default, the intermediate's with --fidelity), and a promotion continues from
the configuration's cached checkpoint instead of retraining."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from cache.store import ArtifactStore
from flows.config import load_config
from flows.fidelity import StoreView, blind_first_rung, study_space
from flows.run_records import StudyRecord, Trial
from flows.study import StudyError
from flows.tune import StageGroups, _summary_markdown, tune_flow
from tuners.mf import MFCacheView

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
CONSTANT = {"mode": "adamw", "lr": 1e-3, "schedule": "constant", "warmup": 0}
SEARCH = {"target_finetune": {
    "epochs": {"type": "int", "low": 1, "high": 4},
    "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}}}


def _doc(tiny: dict[str, Any]) -> dict[str, Any]:
    tiny["target_finetune"] = {"epochs": 2, "optimizer": CONSTANT}
    tiny["search"] = SEARCH
    return tiny


def test_the_fidelity_is_the_last_tuned_training_stage_and_its_epochs_range(tiny):
    study = study_space(load_config(doc=_doc(tiny)), "asha")
    fid = study.fidelity
    assert fid is not None and (fid.stage, fid.min_epochs, fid.max_epochs) == ("target_finetune",
                                                                                  1, 4)
    assert fid.resumable and study.space.stage_names == ("target_finetune",)
    assert "epochs" not in {p.name for p in study.space.stages[0]}  # the tuner sets it per rung
    assert study_space(load_config(doc=tiny), "eeipu").fidelity is None  # stage-level: as is


@pytest.mark.parametrize(("search", "message"), [
    ({"evaluate": {"batch_size": {"type": "int", "low": 8, "high": 16}}},
     "must be a training stage; the last tuned stage, search.evaluate, is not one"),
    ({"target_finetune": {"epochs": {"type": "categorical", "choices": [1, 2]},
                          "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}},
     "search.target_finetune.epochs: a multi-fidelity tuner needs an int range"),
    ({"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 6}}},
     "nothing to tune but target_finetune.epochs"),
    ({"target_finetune": {"epochs": {"type": "int", "low": 3, "high": 3},
                          "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3}}},
     "no epochs to stop early"),
])
def test_a_search_a_multi_fidelity_tuner_cannot_use_is_one_clear_error(tiny, search, message):
    tiny["search"] = search
    with pytest.raises(StudyError, match=message.replace(".", r"\.")):
        study_space(load_config(doc=tiny), "eeipu-mf")


def _upstream_doc(tiny: dict[str, Any]) -> dict[str, Any]:
    """Rungs over the intermediate stage's epochs (1, 3); the target is tuned as usual."""
    tiny["intermediate_finetune"]["optimizer"] = CONSTANT
    tiny["search"] = {
        "intermediate_finetune": {"epochs": {"type": "int", "low": 1, "high": 3},
                                  "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3,
                                                   "log": True}},
        "target_finetune": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3,
                                             "log": True}}}
    return tiny


def test_fidelity_chooses_an_upstream_training_stage(tiny):
    cfg = load_config(doc=_upstream_doc(tiny))
    fid = study_space(cfg, "asha", "intermediate_finetune").fidelity
    assert fid is not None and (fid.stage, fid.index, fid.min_epochs, fid.max_epochs) == (
        "intermediate_finetune", 0, 1, 3)
    with pytest.raises(StudyError, match="target_finetune has no epochs to stop early"):
        study_space(cfg, "asha")  # the default, the last tuned stage, trains one epoch here
    with pytest.raises(StudyError, match="--fidelity data_prep: not a tuned stage of this "
                                         "config"):
        study_space(cfg, "asha", "data_prep")
    with pytest.raises(StudyError, match="only a multi-fidelity tuner"):
        study_space(cfg, "eeipu", "intermediate_finetune")


def test_rungs_over_the_intermediate_stage_continue_its_checkpoint_and_rerun_the_target(
        prefect_api, tiny, store_url, tmp_path):
    cfg = load_config(doc=_upstream_doc(tiny))
    common = dict(tuner="asha", budget=1e6, warmup=3, seed=0, progress=False,
                  lock_dir=str(tmp_path / "locks"))
    tune_flow(store_url, "up", config=cfg.model_dump(mode="json"), max_trials=2,
              fidelity="intermediate_finetune", **common)
    with pytest.raises(StudyError, match="a resumed study keeps its fidelity"):
        tune_flow(store_url, "up", resume=True, max_trials=4, fidelity="target_finetune",
                  **common)
    result = tune_flow(store_url, "up", resume=True, max_trials=4, **common)  # keeps its own
    trials = result["trials"]
    assert [(t["rung"], t["epochs"]) for t in trials] == [(0, 1)] * 3 + [(1, 3)]
    promoted = trials[3]
    assert promoted["active_params"][0]["epochs"] == 3
    inter, target = promoted["stages"][1], promoted["stages"][2]
    # the intermediate stage trained only epochs 2-3 from its 1-epoch boundary; the target
    # reran on the new checkpoint
    assert inter["status"] == "computed" and inter["saved_s"] > 0 and inter["load_s"] > 0
    assert target["status"] == "computed"
    store = ArtifactStore(store_url)
    assert store.manifest(inter["key"]).meta["meta"]["resumed_from_epoch"] == 1

    # the tuner's view: each trial's target output is cached on its own rung's checkpoint
    doc = StudyRecord.model_validate(store.get_json("studies/up/study.json"))
    assert doc.fidelity == "intermediate_finetune"
    assert "asha, rungs over intermediate_finetune epochs" in _summary_markdown(doc, "done")
    study = study_space(cfg, "asha", "intermediate_finetune")
    view = StoreView(store, cfg, study, StageGroups.of(study.space).tuned)(doc.trials)
    assert isinstance(view, MFCacheView) and view.train_stage == 0
    params = doc.trials[3].params
    assert view.plan(params, 3).cached == [True, True]  # the promoted run, all of it
    assert view.plan(params, 1).cached == [True, True]  # its first rung, all of it
    # the boundary the promotion passed: a checkpoint, but no target computed on it
    assert view.plan(params, 2).cached == [True, False]
    other = [dict(params[0]), {"optimizer.lr": 1.5e-3}]
    assert view.plan(other, 1).cached == [True, False]  # checkpoint yes, new target no


def test_asha_promotes_a_trial_by_continuing_its_cached_checkpoint_across_a_resume(prefect_api, tiny, store_url,
                                                                  tmp_path):
    cfg = load_config(doc=_doc(tiny))
    common = dict(tuner="asha", budget=1e6, warmup=3, seed=0, progress=False,
                  lock_dir=str(tmp_path / "locks"))
    tune_flow(store_url, "mf", config=cfg.model_dump(mode="json"), max_trials=2, **common)
    # resumed: the rung state comes back from the study document
    result = tune_flow(store_url, "mf", resume=True, max_trials=4, **common)
    trials = result["trials"]
    assert [(t["rung"], t["epochs"]) for t in trials] == [(0, 1)] * 3 + [(1, 3)]
    best = max(trials[:3], key=lambda t: t["objective"])
    promoted = trials[3]
    assert promoted["config_id"] == best["config_id"] and promoted["params"] == best["params"]
    assert promoted["active_params"][0]["epochs"] == 3
    target = promoted["stages"][2]
    # computed, but only epochs 2-3: it loaded the 1-epoch boundary and saved its seconds
    assert target["status"] == "computed" and target["saved_s"] > 0 and target["load_s"] > 0
    store = ArtifactStore(store_url)
    assert store.manifest(target["key"]).meta["meta"]["resumed_from_epoch"] == 1
    doc = store.get_json("studies/mf/study.json")
    segments = doc["tuner_state"]["extra"]["segments"]
    assert segments["3"]["trained_from"] == 1 and segments["0"]["trained_from"] == 0


@pytest.mark.slow
def test_eeipu_mf_runs_from_the_cli_and_its_promotions_reuse_checkpoints(tiny, cli_env, tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_doc(tiny)))
    store_url = str(tmp_path / "store")
    args = [MEMOTUNE, "tune", str(cfg_path), "--store", store_url, "--tuner", "eeipu-mf",
            "--warmup", "2", "--budget", "1000000", "--max-trials", "5", "--study", "e",
            "--json", "--plot", str(tmp_path / "e.png")]  # not into the working directory
    done = subprocess.run(args, env=cli_env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    trials = json.loads(done.stdout)["trials"]
    assert len(trials) == 5
    assert trials[2]["rung"] == 0 and trials[2]["config_id"] == 2  # an acquisition's new trial
    promoted = [t for t in trials if t["rung"] == 1]
    assert promoted and all(t["stages"][2]["saved_s"] > 0 for t in promoted)
    state = ArtifactStore(store_url).get_json("studies/e/study.json")["tuner_state"]
    assert state["tuner"] == "eeipu-mf"


def test_a_first_rung_that_cannot_rank_is_named_once_it_is_clear():
    fid = study_space(load_config(doc=_doc({"target_finetune": {}})), "asha").fidelity
    assert fid is not None

    def trials(values: list[float]) -> list[Trial]:
        return [Trial(id=i, objective=v, rung=0, epochs=1, config_id=i)
                for i, v in enumerate(values)]

    assert blind_first_rung(trials([0.5] * 5), fid) is None  # too few to say
    assert blind_first_rung(trials([0.5, 0.61, 0.55, 0.5, 0.7, 0.64]), fid) is None
    warning = blind_first_rung(trials([0.5] * 5 + [0.61]), fid)
    assert warning is not None and "5 of 6 first-rung results" in warning
    assert "raise search.target_finetune.epochs.low" in warning


def test_the_cli_refuses_a_space_a_multi_fidelity_tuner_cannot_use(tiny, cli_env, tmp_path):
    tiny["search"] = {"evaluate": {"batch_size": {"type": "int", "low": 8, "high": 16}}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny))
    store_url = tmp_path / "store"
    done = subprocess.run([MEMOTUNE, "tune", str(cfg_path), "--store", str(store_url),
                           "--tuner", "asha"], env=cli_env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "must be a training stage; the last tuned stage, search.evaluate, is not one" in lines[0]
    assert not [p for p in store_url.rglob("*") if p.is_file()]  # refused before any write


def test_the_cli_refuses_a_fidelity_stage_that_is_not_a_tuned_training_stage(tiny, cli_env,
                                                                            tmp_path):
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(_upstream_doc(tiny)))
    done = subprocess.run([MEMOTUNE, "tune", str(cfg_path), "--store", str(tmp_path / "s"),
                           "--tuner", "eeipu-mf", "--fidelity", "evaluate"], env=cli_env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "--fidelity evaluate: not a tuned stage" in lines[0]
    assert "intermediate_finetune" in lines[0]  # it names the stages that would do


@pytest.mark.parametrize("preset", ["study-small", "study-target"])
def test_the_study_examples_are_the_benchmark_presets(preset):
    from benchmarks.presets import PRESETS

    example = Path(__file__).parents[2] / "examples" / f"{preset}.yaml"
    assert load_config(str(example)) == load_config(doc=PRESETS[preset])
    assert study_space(load_config(str(example)), "eeipu-mf").fidelity.resumable
