"""Learning-curve pipelines, freeze-thaw checkpoints in the simulator, and the multi-fidelity tuners."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pytest

from tuners import (
    FloatParam,
    SyntheticPipeline,
    SyntheticStage,
    make_tuner,
    simulate,
    synthetic_suite,
)
from tuners.mf import (
    ASHA,
    MF_TUNERS,
    MFCacheView,
    MFCandidate,
    OneEpochTopK,
    geometric_rungs,
    make_mf_tuner,
)
from tuners.mf.core import CheckpointEntry
from tuners.mf.eeipu import EEIPUMF
from tuners.space import prefix_key
from tuners.synthetic import LearningCurveStage, lc_suite, learning_curve_stage

FAST: dict[str, Any] = {
    "raw_samples": 64,
    "num_restarts": 2,
    "n_optimize": 1,
    "n_mc": 64,
    "n_mc_screen": 16,
    "maxiter": 20,
    "fit_maxiter": 10,
}
LOAD = 0.5


def lc_pipeline(max_epochs: int = 9) -> SyntheticPipeline:
    """prep (cost 20) -> train (epoch cost 4..8, learning curve) -> eval (cost 2..3)."""
    prep = SyntheticStage(
        "prep", [FloatParam("a", 0.0, 1.0)],
        objective=lambda p: -((p["a"] - 0.3) ** 2), cost=lambda p: 20.0,
    )
    tp = [FloatParam("lr", 0.0, 1.0), FloatParam("wd", 0.0, 1.0)]
    train = learning_curve_stage(
        "train", tp,
        asymptote=lambda p: -4.0 * ((p["lr"] - 0.6) ** 2 + (p["wd"] - 0.4) ** 2),
        epoch_cost=lambda p: 4.0 + 4.0 * p["lr"],
        max_epochs=max_epochs, seed=3,
    )
    ev = SyntheticStage(
        "eval", [FloatParam("c", 0.0, 1.0)],
        objective=lambda p: -((p["c"] - 0.5) ** 2), cost=lambda p: 2.0 + p["c"],
    )
    return SyntheticPipeline([prep, train, ev], load_cost=LOAD, name="lc_small")


def kwargs_for(name: str, pipe: SyntheticPipeline) -> dict[str, Any]:
    kw: dict[str, Any] = dict(pipe.fidelity_kwargs()) if name in MF_TUNERS else {}
    if name in ("eeipu-mf", "eeipu", "ei"):
        kw.update(FAST)
    return kw


class Scripted(ASHA):
    """Replays a fixed list of (params, epochs) segments (epochs None: a stage-level candidate)."""

    def __init__(self, pipe: SyntheticPipeline, script: list[tuple[list[dict[str, Any]], int | None]]):
        super().__init__(pipe.space, budget=1e6, **pipe.fidelity_kwargs())
        self.script = script

    def ask(self, cache_view=None):  # type: ignore[override]
        params, epochs = self.script[self.n_asked]
        self.n_asked += 1
        if epochs is None:
            from tuners.base import Candidate

            return Candidate(params=params, id=self.n_asked - 1)
        return MFCandidate(params=params, id=self.n_asked - 1, epochs=epochs, trial=0)

    def tell(self, candidate, objective, stage_costs, cached=None):  # type: ignore[override]
        self.told = (candidate, stage_costs, cached)


# ---------------------------------------------------------------------- synthetic learning curves
def test_learning_curves_rise_saturate_and_cost_linear_in_epochs() -> None:
    rng = np.random.default_rng(0)
    for name, pipe in lc_suite().items():
        t, big_e = pipe.train_stage, pipe.max_epochs
        assert t is not None and big_e == 9, name
        stage = pipe.stages[t]
        assert isinstance(stage, LearningCurveStage)
        for _ in range(30):
            x = pipe.space.sample(rng)
            ys = [stage.objective_at(x[t], e) for e in range(1, big_e + 1)]
            steps = np.diff(ys)
            assert (steps > 0).all(), name  # monotone
            assert steps[-1] < steps[0], name  # saturating
            assert stage.objective(x[t]) == pytest.approx(ys[-1])  # stage-level view = 9 epochs
            c1 = stage.cost_for(x[t], 1)
            assert c1 > 0
            for e in (2, 5, 9):
                assert stage.cost_for(x[t], e) == pytest.approx(e * c1)
            assert stage.cost(x[t]) == pytest.approx(big_e * c1)
            assert pipe.objective_at(x, big_e) == pytest.approx(pipe.objective(x))
            assert pipe.objective_at(x, 1) < pipe.objective(x)


def test_early_ranking_informative_but_imperfect() -> None:
    """Epoch-1 order predicts the final order well, yet some curves cross (slow starters win)."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(1)
    pipe = lc_suite(["lc_prep_train_eval"])["lc_prep_train_eval"]
    t = pipe.train_stage
    stage = pipe.stages[t]
    xs = [pipe.space.sample(rng)[t] for _ in range(270)]
    y1 = np.array([stage.objective_at(x, 1) for x in xs])
    y9 = np.array([stage.objective_at(x, 9) for x in xs])
    assert spearmanr(y1, y9)[0] > 0.6
    groups = np.arange(270).reshape(30, 9)
    same = np.mean([np.argmax(y1[g]) == np.argmax(y9[g]) for g in groups])
    assert 0.3 < same < 0.97


def test_stage_level_suite_has_no_fidelity() -> None:
    for pipe in synthetic_suite().values():
        assert pipe.train_stage is None and pipe.max_epochs is None
    with pytest.raises(ValueError, match="no learning-curve stage"):
        next(iter(synthetic_suite().values())).fidelity_kwargs()


def test_geometric_rungs() -> None:
    assert geometric_rungs(1, 9, 3) == [1, 3, 9]
    assert geometric_rungs(1, 10, 3) == [1, 3, 9, 10]
    assert geometric_rungs(2, 8, 2) == [2, 4, 8]
    with pytest.raises(ValueError):
        geometric_rungs(0, 9, 3)


# ---------------------------------------------------------------------- simulated checkpoints
def test_continuing_from_a_checkpoint_costs_only_the_remaining_epochs() -> None:
    pipe = lc_pipeline()
    x = [{"a": 0.2}, {"lr": 0.5, "wd": 0.5}, {"c": 0.5}]
    x_eval = [{"a": 0.2}, {"lr": 0.5, "wd": 0.5}, {"c": 0.9}]
    ec = 4.0 + 4.0 * 0.5  # epoch cost of x's training stage
    script = [(x, 1), (x, 3), (x, 9), (x, 3), (x_eval, 5), (x, None), (x_eval, None)]
    tuner = Scripted(pipe, script)
    trace = simulate(tuner, pipe, budget=1e6, max_evaluations=len(script))
    costs = [h["cost"] for h in trace.history]
    assert costs[0] == pytest.approx(20.0 + 1 * ec + 2.5)  # from scratch
    assert costs[1] == pytest.approx(LOAD + (LOAD + 2 * ec) + 2.5)  # resume 1 -> 3
    assert costs[2] == pytest.approx(LOAD + (LOAD + 6 * ec) + 2.5)  # resume 3 -> 9
    assert costs[3] == pytest.approx(3 * LOAD)  # everything cached at 3 epochs
    assert costs[4] == pytest.approx(2 * LOAD + 2.9)  # 5-epoch checkpoint saved on the way
    assert costs[5] == pytest.approx(3 * LOAD)  # stage-level candidate = 9 epochs, cached
    assert costs[6] == pytest.approx(2 * LOAD + 2.9)  # new eval params on the 9-epoch checkpoint
    assert [h["trained_from"] for h in trace.history] == [0, 1, 3, 3, 5, 9, 9]
    assert [h["epochs"] for h in trace.history] == [1, 3, 9, 3, 5, 9, 9]
    objs = [h["objective"] for h in trace.history]
    assert objs[0] < objs[1] < objs[2] and objs[3] == pytest.approx(objs[1])
    # the tuner was told the partial cost and a computed (not cached) training stage on resume
    cand, stage_costs, cached = tuner.told
    assert cached == [True, True, False]


def test_cache_view_plan_rules() -> None:
    x = [{"a": 0.2}, {"lr": 0.5, "wd": 0.5}, {"c": 0.5}]
    entry = CheckpointEntry(tuple(x[:2]), (1, 2, 3))
    from tuners.base import CachedPrefix
    from tuners.mf.core import fidelity_key

    view = MFCacheView(
        [CachedPrefix(tuple(x[:1]), (LOAD,))],
        train_stage=1,
        checkpoints={prefix_key(x[:2]): entry},
        outputs=frozenset({fidelity_key(x, 3)}),
    )
    assert view.plan(x, 3).cached == [True, True, True]
    p = view.plan(x, 2)
    assert p.cached == [True, True, False] and p.trained_from(1, 2) == 2
    p = view.plan(x, 9)
    assert p.cached == [True, False, False] and p.resume_from == 3
    other = [{"a": 0.7}, *x[1:]]  # different upstream: nothing reusable
    p = view.plan(other, 3)
    assert p.cached == [False, False, False] and p.resume_from == 0
    assert view.cached_depth(x) == 1  # the stage-level view lists only the upstream prefix


# ---------------------------------------------------------------------- the tuners
@pytest.mark.parametrize("name", MF_TUNERS)
def test_each_mf_tuner_runs_within_budget_and_promotes_from_checkpoints(name: str) -> None:
    pipe = lc_pipeline()
    budget = 500.0
    tuner = make_mf_tuner(name, pipe.space, budget=budget, seed=0, warmup=6, **kwargs_for(name, pipe))
    trace = simulate(tuner, pipe, budget=budget, seed=0)
    assert 0 < trace.spent <= budget
    assert trace.n_evaluations > trace.n_trials > 6  # some trials were promoted
    assert trace.best_objective == max(h["objective"] for h in trace.history)
    rungs = tuner.rungs  # type: ignore[attr-defined]
    reached: dict[int, int] = {}
    for h in trace.history:
        pipe.space.validate(h["params"])
        assert h["epochs"] in rungs
        prev = reached.get(h["trial"], 0)
        if h["source"] == "promote":
            # continued from a checkpoint (its own, or a later one of a trial sharing its
            # prep+train prefix: eeipu-mf pins those), charged only the extra epochs
            start = h["trained_from"]
            assert start >= prev > 0
            if name != "eeipu-mf":
                assert start == prev
            ec = pipe.stages[1].epoch_cost(h["params"][1])  # type: ignore[attr-defined]
            extra = (h["epochs"] - start) * ec
            eval_cost = pipe.stages[2].cost(h["params"][2])
            assert h["cost"] == pytest.approx(LOAD + LOAD + extra + eval_cost)
        else:
            assert h["epochs"] == rungs[0] and h["trial"] not in reached
        assert h["epochs"] > prev
        reached[h["trial"]] = h["epochs"]
    assert max(reached.values()) == rungs[-1]  # someone reached full epochs
    assert trace.n_full >= 1
    assert json.loads(json.dumps(tuner.state_dict()))["tuner"] == name


def test_asha_promotes_the_top_third_of_a_rung() -> None:
    pipe = lc_pipeline()
    tuner = ASHA(pipe.space, budget=1e6, seed=0, warmup=10, **pipe.fidelity_kwargs())
    values = [0.1, 0.5, 0.3, 0.9, 0.2]
    for v in values[:2]:
        c = tuner.ask()
        tuner.tell(c, v, [1.0, 1.0, 1.0])
    c = tuner.ask()
    assert c.source == "warmup" and c.rung == 0  # 2 results at rung 0: nothing to promote yet
    tuner.tell(c, values[2], [1.0, 1.0, 1.0])
    c = tuner.ask()  # 3 results: the best (0.5, trial 1) goes to 3 epochs from its checkpoint
    assert (c.source, c.trial, c.rung, c.epochs, c.resume_epochs) == ("promote", 1, 1, 3, 1)
    assert c.params == tuner.trials[1].params


def test_one_epoch_topk_promotes_top_k_of_each_bracket_to_full() -> None:
    pipe = lc_pipeline()
    tuner = OneEpochTopK(pipe.space, budget=1e6, seed=0, warmup=20, bracket_size=4, top_k=2,
                         **pipe.fidelity_kwargs())
    assert tuner.rungs == [1, 9]
    for v in [0.4, 0.1, 0.7, 0.2]:
        c = tuner.ask()
        assert c.rung == 0 and c.epochs == 1
        tuner.tell(c, v, [1.0, 1.0, 1.0])
    promoted = []
    for _ in range(2):
        c = tuner.ask()
        promoted.append((c.trial, c.epochs, c.resume_epochs))
        tuner.tell(c, 1.0, [1.0, 1.0, 1.0])
    assert promoted == [(2, 9, 1), (0, 9, 1)]
    assert tuner.ask().rung == 0  # then the next bracket


def test_tpe_hyperband_prunes_through_optuna() -> None:
    pipe = lc_pipeline()
    tuner = make_mf_tuner("tpe-hyperband", pipe.space, budget=1500.0, seed=1, warmup=6,
                          **pipe.fidelity_kwargs())
    simulate(tuner, pipe, budget=1500.0, seed=1)
    statuses = [tr.status for tr in tuner.trials]  # type: ignore[attr-defined]
    assert "pruned" in statuses and "done" in statuses
    study = tuner._study  # type: ignore[attr-defined]
    states = {t.number: t.state.name for t in study.trials}
    for tr in tuner.trials:  # type: ignore[attr-defined]
        ostate = states[tr.extra["optuna_number"]]
        assert ostate == {"pruned": "PRUNED", "done": "COMPLETE", "running": "RUNNING",
                          "paused": "RUNNING", "failed": "FAIL"}[tr.status]


@pytest.mark.parametrize("name", ["asha", "tpe-hyperband"])
def test_resumed_mf_tuner_asks_what_the_uninterrupted_one_asks(name: str) -> None:
    pipe = lc_pipeline()
    tuner = make_mf_tuner(name, pipe.space, budget=1e4, seed=2, warmup=4, **pipe.fidelity_kwargs())
    simulate(tuner, pipe, budget=1e4, max_evaluations=14)
    state = json.loads(json.dumps(tuner.state_dict()))
    resumed = make_mf_tuner(name, pipe.space, budget=1e4, seed=2, warmup=4, **pipe.fidelity_kwargs())
    resumed.load_state_dict(state)
    for _ in range(6):
        a, b = tuner.ask(), resumed.ask()
        assert (a.key(), a.trial, a.rung, a.epochs) == (b.key(), b.trial, b.rung, b.epochs)
        y = pipe.objective_at(a.params, a.epochs)
        costs = pipe.stage_costs_at(a.params, a.epochs)
        tuner.tell(a, y, costs, [False] * 3)
        resumed.tell(b, y, costs, [False] * 3)


def test_stage_level_tuner_on_lc_pipeline_trains_full_epochs() -> None:
    pipe = lc_pipeline()
    tuner = make_tuner("random", pipe.space, budget=400.0, seed=0)
    trace = simulate(tuner, pipe, budget=400.0)
    assert trace.n_evaluations >= 5
    for h in trace.history:
        assert h["epochs"] == 9 and h["trained_from"] == 0
        assert h["objective"] == pytest.approx(pipe.objective(h["params"]))


# ---------------------------------------------------------------------- eeipu-mf's acquisition
def _told_eeipu_mf(pipe: SyntheticPipeline) -> EEIPUMF:
    tuner = make_mf_tuner("eeipu-mf", pipe.space, budget=2000.0, seed=0, warmup=8,
                          **kwargs_for("eeipu-mf", pipe))
    simulate(tuner, pipe, budget=2000.0, max_evaluations=12)  # the warm-up and its promotions
    assert isinstance(tuner, EEIPUMF)
    return tuner


def test_eeipu_mf_acquisition_prefers_cached_prefix_and_checkpoint() -> None:
    """Same configuration, same models: the more of it is cached, the higher the acquisition."""
    pipe = lc_pipeline()
    tuner = _told_eeipu_mf(pipe)
    x = [{"a": 0.31}, {"lr": 0.55, "wd": 0.45}, {"c": 0.5}]
    from tuners.base import CachedPrefix

    empty = MFCacheView([], train_stage=1)
    up = MFCacheView([CachedPrefix(tuple(x[:1]), (LOAD,))], train_stage=1)
    ck = MFCacheView(
        [CachedPrefix(tuple(x[:1]), (LOAD,))], train_stage=1,
        checkpoints={prefix_key(x[:2]): CheckpointEntry(tuple(x[:2]), (1, 2, 3))},
    )
    other = MFCacheView(  # a checkpoint of a *different* config changes nothing for x
        [CachedPrefix(({"a": 0.9},), (LOAD,))], train_stage=1,
        checkpoints={prefix_key([{"a": 0.9}, x[1]]): CheckpointEntry(({"a": 0.9}, x[1]), (1,))},
    )
    s_empty, s_up, s_ck, s_other = (tuner.score([x], v)[0] for v in (empty, up, ck, other))
    assert s_empty < s_up < s_ck
    assert s_other == pytest.approx(s_empty)


def test_eeipu_mf_chooses_to_reuse_cached_prefixes() -> None:
    """Over a short study most BO picks pin a cached prefix (prep is 20x a 1-epoch eval)."""
    pipe = lc_pipeline()
    tuner = make_mf_tuner("eeipu-mf", pipe.space, budget=600.0, seed=0, warmup=6,
                          **kwargs_for("eeipu-mf", pipe))
    trace = simulate(tuner, pipe, budget=600.0, seed=0)
    bo = [h for h in trace.history if h["source"] == "bo"]
    assert len(bo) >= 5
    assert sum(h["cached_depth"] >= 1 for h in bo) / len(bo) > 0.5
    rnd = make_mf_tuner("asha", pipe.space, budget=600.0, seed=0, warmup=6, **pipe.fidelity_kwargs())
    rtrace = simulate(rnd, pipe, budget=600.0, seed=0)
    new = [h for h in rtrace.history if h["source"] == "random"]
    assert sum(h["cached_depth"] >= 1 for h in new) == 0  # random picks never hit by chance
    assert trace.n_evaluations > rtrace.n_evaluations
    assert math.isfinite(trace.best_objective)


def test_eeipu_mf_starts_new_trials_above_a_rung_that_cannot_rank() -> None:
    """Six first-rung results, five of them one value: eeipu-mf's next new trial starts at
    rung 1 (and is priced there); ASHA keeps its rule and starts at rung 0."""
    pipe = lc_pipeline()
    for name in ("eeipu-mf", "asha"):
        tuner = make_mf_tuner(name, pipe.space, budget=1e6, seed=0, warmup=6,
                              **kwargs_for(name, pipe))
        first = 0
        while True:
            cand = tuner.ask()
            if cand.source == "promote":  # ASHA's promotions: continue at the next rung
                tuner.tell(cand, 0.7, [0.5, 8.0, 2.0], [True, False, False])
                continue
            if first == 6:
                break
            assert (cand.rung, cand.epochs) == (0, tuner.rungs[0])
            tuner.tell(cand, 0.5 if first < 5 else 0.61, [20.0, 4.0, 2.0], [False] * 3)
            first += 1
        expected = 1 if name == "eeipu-mf" else 0
        assert (cand.rung, cand.epochs) == (expected, tuner.rungs[expected]), name
        assert tuner.trials[cand.trial].rung == expected
