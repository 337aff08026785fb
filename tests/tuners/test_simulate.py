"""Every tuner runs on the simulator; the simulated cache and the trace behave."""

from __future__ import annotations

import time

import pytest
from tuner_helpers import ALL_TUNERS, kwargs_for

from tuners import (
    CachedPrefix,
    CacheView,
    Candidate,
    FloatParam,
    SearchSpace,
    SyntheticPipeline,
    SyntheticStage,
    available_tuners,
    make_tuner,
    simulate,
    synthetic_suite,
)
from tuners.mf import MF_TUNERS
from tuners.random_search import RandomSearch


def test_registry_lists_every_tuner() -> None:
    assert set(available_tuners()) == set(ALL_TUNERS) | set(MF_TUNERS)
    with pytest.raises(ValueError, match="unknown tuner"):
        make_tuner("nope", SearchSpace([[FloatParam("x", 0.0, 1.0)]]), budget=1.0)


@pytest.mark.parametrize("name", ALL_TUNERS)
def test_each_tuner_runs_on_simulate(name: str, mixed) -> None:
    tuner = make_tuner(name, mixed.space, budget=150.0, seed=0, warmup=4, **kwargs_for(name))
    trace = simulate(tuner, mixed, budget=150.0, seed=0, max_evaluations=10)
    assert trace.n_evaluations >= 6
    assert trace.spent <= 150.0
    assert [h["spent"] for h in trace.history] == sorted(h["spent"] for h in trace.history)
    assert trace.best_objective == max(h["objective"] for h in trace.history)
    assert trace.improvement >= 0.0
    assert all(h["source"] == "warmup" for h in trace.history[:4])
    for h in trace.history:
        mixed.space.validate(h["params"])


def test_all_tuners_share_the_warmup_design(pipe) -> None:
    firsts = {}
    for name in ALL_TUNERS:
        tuner = make_tuner(name, pipe.space, budget=1e4, seed=5, warmup=3, **kwargs_for(name))
        firsts[name] = [tuner.ask().key() for _ in range(3)]
    assert len({tuple(v) for v in firsts.values()}) == 1


def test_simulated_cache_serves_repeated_prefixes_to_any_tuner() -> None:
    """A scripted tuner that repeats a prefix gets the hit (the cache is not EEIPU's)."""
    stages = [
        SyntheticStage(f"s{k}", [FloatParam("x", 0.0, 1.0)], lambda p: p["x"], lambda p: 10.0)
        for k in range(3)
    ]
    pipe = SyntheticPipeline(stages, load_cost=0.5)
    script = [[0.1, 0.2, 0.3], [0.1, 0.2, 0.4], [0.1, 0.5, 0.3], [0.9, 0.2, 0.3]]

    class Scripted(RandomSearch):
        def ask(self, cache_view=None):  # type: ignore[override]
            xs = script[len(self.observations)]
            return Candidate(params=[{"x": x} for x in xs], id=len(self.observations))

    trace = simulate(Scripted(pipe.space, budget=1e3), pipe, budget=1e3, max_evaluations=4)
    assert [h["cached_depth"] for h in trace.history] == [0, 2, 1, 0]
    assert [h["cost"] for h in trace.history] == [30.0, 11.0, 20.5, 30.0]


def test_suite_shapes_and_warmup_cost() -> None:
    import numpy as np

    suite = synthetic_suite()
    assert 4 <= len(suite) <= 6
    rng = np.random.default_rng(0)
    for name, p in suite.items():
        assert 2 <= len(p.stages) <= 5 and p.space.stage_names == tuple(s.name for s in p.stages)
        costs = np.array([p.stage_costs(p.space.sample(rng)) for _ in range(300)])
        assert (costs > 0).all()
        assert 150 < costs.sum(1).mean() < 350, name  # ~10 warm-up runs ~ 2500 of B = 8000
        spans = costs.max(0) / costs.min(0)
        assert (spans > 3).all() and (spans < 30).all(), (name, spans)
        objs = [p.objective(p.space.sample(rng)) for _ in range(50)]
        assert max(objs) <= 1e-9 and np.std(objs) > 0


def test_ask_time_at_100_observations() -> None:
    """Generous bound; the real measurement (< 2 s target) is in the benchmark."""
    pipe = synthetic_suite(["hart3_branin_levy3"])["hart3_branin_levy3"]
    assert pipe.space.n_stages == 3 and pipe.space.n_params == 8
    src = make_tuner("random", pipe.space, budget=1e9, seed=0)
    simulate(src, pipe, budget=1e9, max_evaluations=100)
    tuner = make_tuner("eeipu", pipe.space, budget=1e9, seed=0, warmup=0)
    for o in src.observations:
        tuner.tell(Candidate(params=o.params, id=o.id), o.objective, o.stage_costs, o.cached)
    view = CacheView(
        [CachedPrefix(tuple(o.params[:d]), (0.1,) * d) for o in src.observations for d in (1, 2)]
    )
    t0 = time.perf_counter()
    cand = tuner.ask(view)
    assert time.perf_counter() - t0 < 10.0
    assert cand.source == "bo"
