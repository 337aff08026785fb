"""EEIPU and the BO baselines: models, memoization choice, cost cooling, pending asks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from botorch.acquisition import LogExpectedImprovement
from tuner_helpers import FAST

from tuners import (
    CachedPrefix,
    CacheView,
    Candidate,
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    make_tuner,
    prefix_key,
    simulate,
)
from tuners.acquisition import log_ei
from tuners.models import DTYPE, GPPredictor, StageCostModel, fit_gp


def test_predictor_matches_botorch_posterior_and_logei() -> None:
    g = torch.Generator().manual_seed(0)
    X = torch.rand(30, 3, generator=g, dtype=DTYPE)
    Y = torch.sin(6 * X).sum(-1, keepdim=True)
    model, hp = fit_gp(X, Y)
    T = torch.rand(50, 3, generator=g, dtype=DTYPE)
    pred = GPPredictor(model)
    mean, var = pred(T)
    with torch.no_grad():
        post = model.posterior(T.unsqueeze(-2))
        ref = LogExpectedImprovement(model, best_f=Y.max())(T.unsqueeze(-2))
    assert torch.allclose(mean, post.mean.reshape(-1), atol=1e-8)
    assert torch.allclose(var, post.variance.reshape(-1), rtol=1e-6, atol=1e-10)
    assert torch.allclose(log_ei(pred, float(Y.max()), T), ref, atol=1e-6)
    # Warm start from the JSON-able hyperparameters reproduces the fit.
    again, hp2 = fit_gp(X, Y, warm_start=hp, maxiter=5)
    assert np.allclose(hp2["covar_module.raw_lengthscale"], hp["covar_module.raw_lengthscale"], atol=1e-3)


def test_mc_inverse_cost_matches_lognormal_closed_form() -> None:
    """One stage, log cost ~ N(mu, s^2): E[1/C] = exp(-mu + s^2/2)."""
    g = torch.Generator().manual_seed(1)
    X = torch.rand(12, 1, generator=g, dtype=DTYPE)
    logc = 2.0 + X[:, 0] + 0.3 * torch.sin(9 * X[:, 0])
    from botorch.utils.sampling import draw_sobol_normal_samples

    z = draw_sobol_normal_samples(d=1, n=4096, dtype=DTYPE, seed=0)
    cm = StageCostModel([slice(0, 1)], [(X, logc)], [None], 50, z)
    T = torch.rand(20, 1, generator=g, dtype=DTYPE)
    mu, sd = cm.moments(T)
    exact = -mu[:, 0] + sd[:, 0] ** 2 / 2
    mc = cm.log_expected_inverse_cost(T)
    assert torch.allclose(mc, exact, atol=2e-3)
    # A cached stage costs exactly its load cost.
    cached = cm.log_expected_inverse_cost(T, torch.tensor([True]), torch.tensor([math.log(0.1)], dtype=DTYPE))
    assert torch.allclose(cached, torch.full_like(cached, -math.log(0.1)))


def _expensive_prefix_case() -> tuple[SearchSpace, list, CacheView, float]:
    """Stage 1 costs ~100, stage 2 ~2; the best stage-1 value is cached."""
    space = SearchSpace([[FloatParam("a", 0.0, 1.0)], [FloatParam("b", 0.0, 1.0)]])
    best_a = 0.1 + 0.2  # 0.30000000000000004: any decode/re-encode would lose it

    def f(a: float, b: float) -> float:
        return -4 * (a - best_a) ** 2 - (b - 0.3) ** 2

    rng = np.random.default_rng(0)
    pts = [(float(a), float(b)) for a, b in rng.random((12, 2))] + [(best_a, 0.9)]
    obs = [([{"a": a}, {"b": b}], f(a, b), [100.0 * (1 + 0.2 * a), 2.0 * (1 + 0.2 * b)]) for a, b in pts]
    view = CacheView([CachedPrefix(({"a": a},), (0.1,)) for a, _ in pts])
    return space, obs, view, best_a


@pytest.mark.parametrize("name", ["eeipu", "ms_carbo"])
def test_eeipu_reuses_cached_prefix_when_costs_say_so(name: str) -> None:
    space, obs, view, best_a = _expensive_prefix_case()
    tuner = make_tuner(name, space, budget=1e5, seed=0, warmup=0, **FAST)
    for i, (params, y, costs) in enumerate(obs):
        tuner.tell(Candidate(params=params, id=i), y, costs, [False, False])
    cand = tuner.ask(view)
    assert cand.source == "bo"
    if name == "eeipu":
        assert cand.prefix_depth == 1
        assert cand.params[0] == {"a": best_a}
        assert repr(cand.params[0]["a"]) == repr(best_a)  # the stored float, bit for bit
        assert view.cached_depth(cand.params) == 1
        assert cand.expected_cost is not None and cand.expected_cost < 10.0
        assert abs(cand.params[1]["b"] - 0.3) < 0.25
    else:  # no memoization: never pins a prefix, never hits the cache by choice
        assert cand.prefix_depth == 0
        assert view.cached_depth(cand.params) == 0


def test_cost_cooling_reaches_zero_at_budget(pipe) -> None:
    tuner = make_tuner("eeipu", pipe.space, budget=100.0, seed=0, warmup=3, **FAST)
    for _ in range(3):
        c = tuner.ask()
        tuner.tell(c, pipe.objective(c.params), [9.0, 1.0], [False, False])
    assert tuner.eta == 1.0 and tuner.b0 is None
    c = tuner.ask()  # first BO ask: warm-up ended at spent = 30
    assert tuner.b0 == 30.0 and c.eta == 1.0
    tuner.tell(c, pipe.objective(c.params), [30.0, 5.0], [False, False])
    assert tuner.eta == pytest.approx(0.5)
    c = tuner.ask()
    assert c.eta == pytest.approx(0.5)
    tuner.tell(c, pipe.objective(c.params), [30.0, 5.0], [False, False])
    assert tuner.spent == pytest.approx(100.0) and tuner.eta == 0.0
    assert tuner.ask().eta == 0.0


def test_pending_asks_are_distinct_continuous(pipe) -> None:
    tuner = make_tuner("eeipu", pipe.space, budget=1e4, seed=0, warmup=4, **FAST)
    simulate(tuner, pipe, budget=1e4, max_evaluations=6)
    cands = [tuner.ask() for _ in range(4)]
    keys = {c.key() for c in cands}
    assert len(keys) == 4 and len(tuner.pending) == 4
    assert not keys & {prefix_key(o.params) for o in tuner.observations}
    X = np.array([pipe.space.to_unit(c.params) for c in cands])
    dists = np.linalg.norm(X[:, None] - X[None], axis=-1)[np.triu_indices(4, 1)]
    assert dists.min() > 1e-3  # kriging-believer fantasies spread the batch out


@pytest.mark.parametrize("name", ["eeipu", "ei", "tpe", "random"])
def test_pending_asks_are_distinct_in_a_tiny_discrete_space(name: str) -> None:
    space = SearchSpace([[IntParam("i", 0, 3)], [IntParam("j", 0, 2)]])  # 12 configurations
    kw = FAST if name in ("eeipu", "ei") else {}
    tuner = make_tuner(name, space, budget=1e4, seed=0, warmup=2, **kw)
    for _ in range(2):
        c = tuner.ask()
        tuner.tell(c, -abs(c.params[0]["i"] - 2) - abs(c.params[1]["j"] - 1), [3.0, 1.0])
    cands = [tuner.ask() for _ in range(8)]
    keys = [c.key() for c in cands] + [prefix_key(o.params) for o in tuner.observations]
    assert len(set(keys)) == len(keys) == 10
    for c in cands:
        space.validate(c.params)
        assert all(type(v) is int for p in c.params for v in p.values())


def test_intended_reuse_always_hits_the_cache(pipe) -> None:
    tuner = make_tuner("eeipu", pipe.space, budget=400.0, seed=1, warmup=5, **FAST)
    trace = simulate(tuner, pipe, budget=400.0, seed=1, max_evaluations=12)
    reused = [h for h in trace.history if h["prefix_depth"] > 0]
    assert reused, "EEIPU never chose to reuse a prefix of the expensive stage"
    assert all(h["cached_depth"] >= h["prefix_depth"] for h in reused)


def test_mixed_space_candidates_are_valid(mixed) -> None:
    tuner = make_tuner("eeipu", mixed.space, budget=1e4, seed=0, warmup=4, **FAST)
    trace = simulate(tuner, mixed, budget=1e4, max_evaluations=9)
    assert trace.n_evaluations == 9
    for h in trace.history:
        mixed.space.validate(h["params"])
        assert type(h["params"][0]["n"]) is int and type(h["params"][1]["epochs"]) is int
        assert h["params"][1]["mode"] in ("a", "b", "c")


@pytest.mark.parametrize("name", ["eeipu", "tpe"])
def test_conditional_params_are_canonical_in_every_ask(name: str) -> None:
    space = SearchSpace(
        [[FloatParam("a", 0.0, 1.0)],
         [CategoricalParam("mode", ("plain", "adaptive")), FloatParam("rate", 0.1, 1.0)]],
        conditions=[{}, {"rate": ("mode", ("adaptive",))}],
    )
    kw = FAST if name == "eeipu" else {}
    tuner = make_tuner(name, space, budget=1e4, seed=0, warmup=3, **kw)
    modes = set()
    for _ in range(8):
        c = tuner.ask()
        p = c.params[1]
        modes.add(p["mode"])
        if p["mode"] == "plain":
            assert p["rate"] == 0.1  # the canonical value, not a random one
        y = -abs(c.params[0]["a"] - 0.5) - (abs(p["rate"] - 0.6) if p["mode"] == "adaptive" else 0.3)
        tuner.tell(c, y, [3.0, 1.0])
    assert modes == {"plain", "adaptive"}
