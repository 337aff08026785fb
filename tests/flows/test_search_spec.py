"""`search:` is a typed part of the config: every mistake in it is one line at load time.

A misspelled parameter name used to pass `load_config`, start the Prefect server and a
flow run, and fail on the first candidate with a long traceback (exit 1). Now the name
is resolved against the stage's own params model when the config loads, and the CLI
refuses it with one line, exit 2, before the store or Prefect is touched.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from flows.config import DEFAULT_SEARCH, ConfigError, load_config
from stages.pipeline import STAGE_NAMES
from tuners import SearchSpace
from tuners.search_spec import SpecError, parse_search

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
TYPO = "search.target_finetune.optimizer.lr_typo"
TYPO_SEARCH = {"target_finetune": {
    "optimizer.lr_typo": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}}}


def _refused(search: Any, **doc: Any) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(doc={**doc, "search": search})
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- the CLI (regression)


def _env(tmp_path: Path) -> dict[str, str]:
    """No Prefect API configured: a flow run would start a server (its pid file lands in
    HOME/.memotune) or, here, Prefect's temporary one (its database in PREFECT_HOME)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEMOTUNE_", "HF_", "PREFECT_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               MEMOTUNE_PREFECT_SERVER="ephemeral")
    return env


@pytest.mark.parametrize("command", [["plan"], ["tune", "--max-trials", "1"]])
def test_a_misspelled_search_name_is_one_line_exit_2_and_nothing_starts(tmp_path, command):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"search": TYPO_SEARCH}))
    store = tmp_path / "store"
    proc = subprocess.run([MEMOTUNE, *command, str(cfg), "--store", str(store)],
                          capture_output=True, text=True, env=_env(tmp_path), cwd=tmp_path,
                          timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("error: ") and TYPO in lines[0], lines[0]
    assert "unknown parameter" in lines[0] and "'lr'" in lines[0], lines[0]  # suggests lr
    assert proc.stdout == ""
    assert not store.exists()  # nothing written to the store
    assert not (tmp_path / "home" / ".memotune").exists()  # no server, no locks
    assert not (tmp_path / "prefect").exists()  # no flow run on a temporary server either


# ---------------------------------------------------------------- names


def test_names_resolve_against_the_stages_own_params_models():
    ok = {
        "intermediate_finetune": {
            "enabled": {"type": "categorical", "choices": [True, False]},
            "model.builtin.dropout": {"type": "float", "low": 0.0, "high": 0.3},
            "validation.patience": {"type": "int", "low": 1, "high": 3},
        },
        "target_finetune": {
            "batch_size": {"type": "int", "low": 8, "high": 64, "log": True},
            # fields of one optimizer mode only are fine: the mode may be tuned too
            "optimizer.mode": {"type": "categorical", "choices": ["adamw", "adam_sls"]},
            "optimizer.beta_backtrack": {"type": "float", "low": 0.5, "high": 0.95,
                                         "when": {"optimizer.mode": ["adam_sls"]}},
        },
        "data_prep": {"intermediate.n_choices": {"type": "int", "low": 2, "high": 5}},
        "evaluate": {"batch_size": {"type": "categorical", "choices": [64, 128]}},
    }
    assert load_config(doc={"search": ok}).model_dump(mode="json")["search"] == ok


@pytest.mark.parametrize(("stage", "name", "needle"), [
    ("target_finetune", "optimizer.lr_typo", "did you mean 'lr'"),
    ("target_finetune", "epoch", "did you mean 'epochs'"),
    ("intermediate_finetune", "model.builtin.widht", "model.builtin"),
    ("target_finetune", "model.builtin.dropout", "target_finetune has no setting 'model'"),
    ("data_prep", "target.nope", "data_prep.target has no setting 'nope'"),
    ("target_finetune", "epochs.x", "'epochs' is a single setting"),
    ("target_finetune", "optimizer", "group of settings"),
    ("intermediate_finetune", "model.builtin", "group of settings"),
    ("target_finetune", "", "must not be empty"),
    ("target_finetune", "optimizer..lr", "unknown parameter"),
])
def test_unknown_names_are_refused_with_their_full_path(stage, name, needle):
    spec = {"type": "categorical", "choices": [1, 2]}
    msg = _refused({stage: {name: spec}})
    assert f"search.{stage}.{name}:" in msg and needle in msg, msg


@pytest.mark.parametrize(("search", "path"), [
    ({"nope": {"epochs": {"type": "int", "low": 1, "high": 2}}}, "search.nope:"),
    ({"target_finetune": {}}, "search.target_finetune:"),
    ({"target_finetune": {"epochs": {"type": "integer", "low": 1, "high": 2}}},
     "search.target_finetune.epochs.type:"),
    ({"target_finetune": {"epochs": {"low": 1, "high": 2}}}, "search.target_finetune.epochs.type:"),
    ({"target_finetune": {"epochs": 3}}, "search.target_finetune.epochs:"),
    ({"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 2, "step": 1}}},
     "search.target_finetune.epochs.step:"),
    ({"target_finetune": {"epochs": {"type": "int", "low": 1.5, "high": 2}}},
     "search.target_finetune.epochs.low:"),
    ({"target_finetune": {"epochs": {"type": "int", "low": "1", "high": 2}}},
     "search.target_finetune.epochs.low:"),
    ({"target_finetune": {"epochs": {"type": "int", "low": 3, "high": 2}}},
     "search.target_finetune.epochs.high:"),
    ({"target_finetune": {"optimizer.lr": {"type": "float", "low": 0.0, "high": 1.0, "log": True}}},
     "search.target_finetune.optimizer.lr.low:"),
    ({"target_finetune": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3, "log": "yes"}}},
     "search.target_finetune.optimizer.lr.log:"),
    ({"target_finetune": {"optimizer.mode": {"type": "categorical", "choices": ["adamw", ["x"]]}}},
     "search.target_finetune.optimizer.mode.choices[1]:"),
    ({"target_finetune": {"optimizer.mode": {"type": "categorical", "choices": []}}},
     "search.target_finetune.optimizer.mode.choices:"),
    ({"target_finetune": {"optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3,
                                           "when": {"epochs": [3]}}}},
     "search.target_finetune.optimizer.lr.when.epochs:"),
    ({"target_finetune": {
        "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3,
                         "when": {"optimizer.mode": ["sgd"]}}}},
     "search.target_finetune.optimizer.lr.when.optimizer.mode:"),
    ({"target_finetune": {
        "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-3,
                         "when": {"optimizer.mode": "hypergradient", "epochs": 3}}}},
     "search.target_finetune.optimizer.lr.when:"),
])
def test_bad_specs_name_the_field(search, path):
    msg = _refused(search)
    assert msg.startswith(f"built-in default: {path}"), msg
    assert "Value error" not in msg and "[key]" not in msg, msg


def test_a_spec_error_in_a_file_names_the_file(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump({"search": TYPO_SEARCH}))
    with pytest.raises(ConfigError) as info:
        load_config(cfg)
    assert str(info.value).startswith(f"{cfg}: {TYPO}: unknown parameter"), str(info.value)


# ---------------------------------------------------------------- JSON, as stored with studies


def test_the_search_section_dumps_exactly_as_written():
    """Studies store `cfg.model_dump(mode="json")`: the section comes back as it was
    written (no defaults added, none dropped), so stored studies keep matching."""
    written = {"target_finetune": {
        "epochs": {"type": "int", "low": 1, "high": 4},  # no log: none added
        "batch_size": {"type": "int", "low": 8, "high": 64, "log": False},  # kept
        "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
        "optimizer.hypergrad_lr": {"type": "float", "low": 1e-7, "high": 1e-5, "log": True,
                                   "when": {"optimizer.mode": "hypergradient"}},
    }}
    cfg = load_config(doc={"search": written})
    dumped = cfg.model_dump(mode="json")
    assert dumped["search"] == written
    # byte for byte what the untyped section stored, and the same space (tuner state)
    assert json.dumps(dumped["search"]) == json.dumps(written)
    assert SearchSpace.from_spec(cfg.search, STAGE_NAMES).fingerprint() == "7d210810eaba44cf"
    assert list(dumped["search"]["target_finetune"]) == list(written["target_finetune"])
    again = load_config(doc=dumped)  # what a resumed study does
    assert again.model_dump(mode="json") == dumped and again.search == cfg.search
    assert cfg.search == written  # the typed section equals the YAML it was read from


def test_the_built_in_search_round_trips_and_keeps_its_fingerprint():
    cfg = load_config()
    assert json.dumps(cfg.model_dump(mode="json")["search"]) == json.dumps(DEFAULT_SEARCH)
    space = SearchSpace.from_spec(cfg.search, STAGE_NAMES)
    assert space.fingerprint() == "c608eda71cb4dd4c"  # as before the section was typed
    assert SearchSpace.from_config(DEFAULT_SEARCH, STAGE_NAMES).fingerprint() == "c608eda71cb4dd4c"
    assert space.to_config()["target_finetune"]["optimizer.hypergrad_lr"]["when"] == {
        "optimizer.mode": ["hypergradient"]}


# ---------------------------------------------------------------- one place for each rule


def test_the_tuners_build_from_the_checked_spec_and_check_nothing_again():
    """parse_search (strict) is the only check of a plain section; SearchSpace.from_spec
    adds only what it needs itself (a non-empty section, stages it can order)."""
    with pytest.raises(SpecError, match=r"^search\.t\.x\.low: Input should be a valid number"):
        parse_search({"t": {"x": {"type": "float", "low": "1e-3", "high": 1.0}}})
    with pytest.raises(SpecError, match=r"^search\.t\.x\.log: Input should be a valid boolean"):
        parse_search({"t": {"x": {"type": "float", "low": 0.1, "high": 1.0, "log": 1}}})
    spec = parse_search({"t": {"x": {"type": "int", "low": 2, "high": 5, "log": True},
                               "c": {"type": "categorical", "choices": [1, 1.0, True]}}})
    space = SearchSpace.from_spec(spec, ["s", "t"])
    assert space.stage_names == ("t",) and space.to_config() == {"t": {
        "x": {"type": "int", "low": 2, "high": 5, "log": True},
        "c": {"type": "categorical", "choices": [1, 1.0, True]}}}
    with pytest.raises(SpecError, match=r"^search\.t: unknown stage"):
        SearchSpace.from_spec(spec, ["s"])
    with pytest.raises(SpecError, match=r"^search: "):
        SearchSpace.from_spec({}, ["s"])
