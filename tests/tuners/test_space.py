"""Search spaces: exact round trips, from_config, field-named errors, CacheView building."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tuners import CacheView, CategoricalParam, FloatParam, IntParam, SearchSpace, prefix_key

CONFIG = {
    "target_finetune": {
        "lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
        "epochs": {"type": "int", "low": 1, "high": 3},
        "mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
    },
    "data_prep": {"max_len": {"type": "int", "low": 64, "high": 512, "log": True}},
}
ORDER = ["data_prep", "intermediate_finetune", "target_finetune", "evaluate"]


def test_int_values_round_trip_exactly() -> None:
    for p in (IntParam("e", 1, 5), IntParam("n", 1, 1000, log=True), IntParam("z", -3, 3)):
        for v in range(p.low, p.high + 1):
            back = p.from_unit(p.to_unit(v))
            assert back == v and type(back) is int


def test_categorical_values_round_trip_exactly() -> None:
    p = CategoricalParam("c", ["a", 1, 1.0, True, None, 0.1 + 0.2])
    for v in p.choices:
        back = p.from_unit(p.to_unit(v))
        assert json.dumps(back) == json.dumps(v)  # 1 vs 1.0 vs True stay distinct


def test_float_bounds_and_grid_values_round_trip() -> None:
    lin = FloatParam("x", 0.0, 1.0)
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert lin.from_unit(lin.to_unit(v)) == v
    log = FloatParam("lr", 1e-5, 1e-2, log=True)
    assert log.from_unit([0.0]) == 1e-5 and log.from_unit([1.0]) == 1e-2
    assert log.from_unit([-3.0]) == 1e-5 and log.from_unit([7.0]) == 1e-2  # clipped


def test_space_encoding_and_sampling() -> None:
    space = SearchSpace(
        [[FloatParam("x1", 0.0, 1.0), FloatParam("lr", 1e-5, 1e-2, log=True)],
         [IntParam("epochs", 1, 5), CategoricalParam("mode", ["a", "b"])]]
    )
    assert space.dim == 5 and space.n_stages == 2 and space.stage_names == ("stage0", "stage1")
    assert space.stage_slices == (slice(0, 2), slice(2, 5))
    rng = np.random.default_rng(0)
    for _ in range(50):
        cfg = space.sample(rng)
        space.validate(cfg)
        u = space.to_unit(cfg)
        assert all(0.0 <= x <= 1.0 for x in u)
        back = space.from_unit(u)
        assert back[1] == cfg[1]  # int + categorical stage: exact
        assert back[0]["x1"] == pytest.approx(cfg[0]["x1"], rel=1e-12)
        assert space.project(u) == pytest.approx(u)


def test_from_config_orders_and_skips_stages() -> None:
    space = SearchSpace.from_config(CONFIG, ORDER)
    assert space.stage_names == ("data_prep", "target_finetune")
    assert [p.name for p in space.stages[1]] == ["lr", "epochs", "mode"]
    lr = space.stages[1][0]
    assert isinstance(lr, FloatParam) and lr.log and lr.low == 1e-5
    assert isinstance(space.stages[0][0], IntParam) and space.stages[0][0].log
    again = SearchSpace.from_config(space.to_config(), ORDER)
    assert again.fingerprint() == space.fingerprint()


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"lr": {"type": "float", "high": 1e-3}}, "search.target_finetune.lr.low"),
        ({"lr": {"type": "float", "low": "x", "high": 1e-3}}, "search.target_finetune.lr.low"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1e-3, "log": True}}, "search.target_finetune.lr.low"),
        ({"lr": {"type": "float", "low": 1e-3, "high": 1e-5}}, "search.target_finetune.lr.high"),
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": "yes"}}, "search.target_finetune.lr.log"),
        ({"lr": {"type": "double", "low": 1e-5, "high": 1e-3}}, "search.target_finetune.lr.type"),
        ({"lr": {"type": "float", "low": 1e-5, "high": 1e-3, "step": 2}}, "search.target_finetune.lr.step"),
        ({"epochs": {"type": "int", "low": 1.5, "high": 3}}, "search.target_finetune.epochs.low"),
        ({"mode": {"type": "categorical", "choices": []}}, "search.target_finetune.mode.choices"),
        ({"mode": {"type": "categorical", "choices": ["a", "a"]}}, "search.target_finetune.mode.choices"),
        ({"mode": {"type": "categorical", "choices": ["a", [1]]}}, "search.target_finetune.mode.choices[1]"),
    ],
)
def test_from_config_errors_name_the_field(patch: dict, field: str) -> None:
    bad = {"target_finetune": {**CONFIG["target_finetune"], **patch}}
    with pytest.raises(ValueError) as err:
        SearchSpace.from_config(bad, ORDER)
    assert str(err.value).startswith(field + ":"), str(err.value)


def test_from_config_rejects_unknown_and_empty_stages() -> None:
    with pytest.raises(ValueError, match=r"^search\.nope:"):
        SearchSpace.from_config({"nope": {"x": {"type": "int", "low": 1, "high": 2}}}, ORDER)
    with pytest.raises(ValueError, match=r"^search\.data_prep:"):
        SearchSpace.from_config({"data_prep": {}}, ORDER)
    with pytest.raises(ValueError, match=r"^search:"):
        SearchSpace.from_config({}, ORDER)


def test_prefix_key_is_exact() -> None:
    assert prefix_key([{"a": 0.1 + 0.2}]) != prefix_key([{"a": 0.3}])
    assert prefix_key([{"a": 1}]) != prefix_key([{"a": 1.0}])
    assert prefix_key([{"a": 1, "b": 2}]) == prefix_key([{"b": 2, "a": 1}])


def test_cache_view_from_runs() -> None:
    run1 = [{"a": 0.1 + 0.2}, {"b": 1}, {"c": "x"}]
    run2 = [{"a": 0.1 + 0.2}, {"b": 2}, {"c": "y"}]
    view = CacheView.from_runs(
        [(run1, [True, True, False], [0.5, 0.25, None]), (run2, [True, False, True], None)]
    )
    assert len(view) == 2  # (a), (a, b=1); run2's stage 3 is unreachable without stage 2
    assert view.cached_depth(run1) == 2 and view.cached_depth(run2) == 1
    assert view.cached_depth([{"a": 0.3}, {"b": 1}, {"c": "x"}]) == 0  # exact values only
    assert view.get(run1[:2]).load_costs == (0.5, 0.25)
    assert CacheView.empty().cached_depth(run1) == 0


COND = {
    "target_finetune": {
        "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "optimizer.hypergrad_lr": {"type": "float", "low": 1e-7, "high": 1e-5, "log": True,
                                   "when": {"optimizer.mode": ["hypergradient"]}},
    }
}


def test_conditional_param_is_canonical_when_inactive_and_dropped_for_the_pipeline() -> None:
    space = SearchSpace.from_config(COND, ORDER)
    assert space.to_config() == COND  # round trip, condition included
    rng = np.random.default_rng(0)
    seen = {"adamw": set(), "hypergradient": set()}
    for _ in range(200):
        (params,) = space.sample(rng)
        seen[params["optimizer.mode"]].add(params["optimizer.hypergrad_lr"])
        active = space.active_params(0, params)
        if params["optimizer.mode"] == "adamw":
            assert "optimizer.hypergrad_lr" not in active
        else:
            assert active == params
    assert seen["adamw"] == {1e-7}  # one canonical value: adamw configs differ only in lr
    assert len(seen["hypergradient"]) > 50
    # two encodings that differ only in the inactive column decode to the same config
    base = space.to_unit([{"optimizer.mode": "adamw", "optimizer.lr": 1e-3,
                           "optimizer.hypergrad_lr": 1e-7}])
    other = list(base)
    other[-1] = 0.9
    assert prefix_key(space.from_unit(base)) == prefix_key(space.from_unit(other))
    # and the fingerprint sees the condition
    plain = {"target_finetune": {k: {f: x for f, x in v.items() if f != "when"}
                                 for k, v in COND["target_finetune"].items()}}
    assert SearchSpace.from_config(plain, ORDER).fingerprint() != space.fingerprint()


@pytest.mark.parametrize(
    ("when", "field"),
    [
        ({"optimizer.lr": [1e-3]}, "optimizer.hypergrad_lr.when.optimizer.lr"),
        ({"optimizer.mode": ["sgd"]}, "optimizer.hypergrad_lr.when.optimizer.mode"),
        ({"nope": ["adamw"]}, "optimizer.hypergrad_lr.when.nope"),
        ("hypergradient", "optimizer.hypergrad_lr.when"),
    ],
)
def test_conditional_param_errors_name_the_field(when: object, field: str) -> None:
    bad = json.loads(json.dumps(COND))
    bad["target_finetune"]["optimizer.hypergrad_lr"]["when"] = when
    with pytest.raises(ValueError, match=f"search.target_finetune.{field}"):
        SearchSpace.from_config(bad, ORDER)
