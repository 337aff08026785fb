"""Optimizer settings: strict, complete and canonical (they go into the cache key)."""

from __future__ import annotations

import json

import pytest
from pydantic import BaseModel, ValidationError

from stages.optim import (
    AdamSLSSettings,
    LookaheadSettings,
    OptimizerSettings,
    PLASLSSettings,
    parse_optimizer_settings,
)

MODES = ["adamw", "hypergradient", "lookahead", "adam_sls", "pla_sls"]


def _key(d: dict) -> str:
    return json.dumps(d, sort_keys=True)


@pytest.mark.parametrize("mode", MODES)
def test_unknown_key_rejected_naming_it(mode: str) -> None:
    with pytest.raises(ValidationError) as err:
        parse_optimizer_settings({"mode": mode, "lerning_rate": 1e-3})
    assert "lerning_rate" in str(err.value)
    assert any("lerning_rate" in e["loc"] for e in err.value.errors())


def test_bad_value_and_bad_mode_named() -> None:
    with pytest.raises(ValidationError) as err:
        parse_optimizer_settings({"mode": "adamw", "lr": -1})
    assert ("adamw", "lr") in [tuple(e["loc"]) for e in err.value.errors()]
    with pytest.raises(ValidationError, match="mode"):
        parse_optimizer_settings({"lr": 1e-3})
    with pytest.raises(ValidationError, match="sgd"):
        parse_optimizer_settings({"mode": "sgd"})


@pytest.mark.parametrize("mode", MODES)
def test_dump_is_complete_deterministic_and_round_trips(mode: str) -> None:
    a = parse_optimizer_settings({"mode": mode}).model_dump()
    b = parse_optimizer_settings({"mode": mode}).model_dump()
    assert _key(a) == _key(b)
    assert a["mode"] == mode
    for common in ("lr", "weight_decay", "grad_clip", "schedule", "warmup", "label_smoothing"):
        assert common in a
    assert parse_optimizer_settings(a).model_dump() == a
    json.dumps(a)  # JSON-safe


def test_spec_defaults() -> None:
    sls = parse_optimizer_settings({"mode": "adam_sls"}).model_dump()
    assert sls["lr"] == 0.1 and sls["c"] == 0.1 and sls["beta_backtrack"] == 0.9
    assert sls["gamma"] == 2.0 and sls["n_batches_per_epoch"] is None and sls["max_trials"] == 100
    assert (sls["beta1"], sls["beta2"]) == (0.9, 0.999)
    pla = parse_optimizer_settings({"mode": "pla_sls"}).model_dump()
    assert pla["n_groups"] == 10 and pla["strategy"] == "cycle"
    la = parse_optimizer_settings({"mode": "lookahead"}).model_dump()
    assert la["meta_lr"] == 3e-5 and la["tune"] == ["lr"] and la["nan_guard"] == 10.0
    hd = parse_optimizer_settings({"mode": "hypergradient"}).model_dump()
    assert hd["hypergrad_lr"] == 1e-8 and hd["rule"] == "additive"
    aw = parse_optimizer_settings({"mode": "adamw"}).model_dump()
    assert aw["lr"] == 2e-5 and aw["schedule"] == "cosine" and aw["warmup"] == 0.1


def test_mode_defaults_are_resolved_into_the_dump() -> None:
    implicit = parse_optimizer_settings({"mode": "hypergradient"}).model_dump()
    explicit = parse_optimizer_settings(
        {"mode": "hypergradient", "hypergrad_lr": 1e-8}
    ).model_dump()
    assert implicit == explicit
    mult = parse_optimizer_settings({"mode": "hypergradient", "rule": "multiplicative"})
    assert mult.hypergrad_lr == 1e-2
    t1 = parse_optimizer_settings({"mode": "lookahead", "tune": ["label_smoothing", "lr", "lr"]})
    t2 = parse_optimizer_settings({"mode": "lookahead", "tune": ["lr", "label_smoothing"]})
    assert t1.model_dump() == t2.model_dump()
    assert t1.tune == ["lr", "label_smoothing"]


def test_different_settings_give_different_dumps() -> None:
    dumps = {
        _key(parse_optimizer_settings(d).model_dump())
        for d in [
            {"mode": "adamw"},
            {"mode": "adamw", "lr": 3e-5},
            {"mode": "adamw", "schedule": "linear"},
            {"mode": "adamw", "grad_clip": 1.0},
            {"mode": "hypergradient"},
            {"mode": "hypergradient", "rule": "multiplicative"},
            {"mode": "lookahead"},
            {"mode": "lookahead", "tune": ["lr", "weight_decay"]},
            {"mode": "adam_sls"},
            {"mode": "adam_sls", "c": 0.5},
            {"mode": "pla_sls"},
            {"mode": "pla_sls", "n_groups": 4},
        ]
    }
    assert len(dumps) == 12


def test_line_search_rejects_a_schedule() -> None:
    with pytest.raises(ValidationError, match="schedule"):
        parse_optimizer_settings({"mode": "adam_sls", "schedule": "cosine"})
    with pytest.raises(ValidationError, match="warmup"):
        parse_optimizer_settings({"mode": "pla_sls", "warmup": 0.1})


def test_settings_are_frozen_and_embeddable() -> None:
    s = parse_optimizer_settings({"mode": "pla_sls"})
    assert isinstance(s, PLASLSSettings) and isinstance(s, AdamSLSSettings)
    with pytest.raises(ValidationError):
        s.c = 0.3  # type: ignore[misc]

    class StageConfig(BaseModel):
        optimizer: OptimizerSettings

    cfg = StageConfig.model_validate({"optimizer": {"mode": "lookahead", "tune": ["beta1"]}})
    assert isinstance(cfg.optimizer, LookaheadSettings)
