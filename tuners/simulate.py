"""Run any tuner against a synthetic pipeline with a simulated cache.

The simulated cache behaves like the real store with unlimited capacity: once
a configuration has run, every prefix of it is cached; a later configuration
whose leading stages equal (exactly, as python values) a cached prefix loads
those stages at ``pipeline.load_cost`` each instead of computing them.  Every
tuner sees the same cache rules, so a baseline that happens to repeat a prefix
gets the hit too; only a memoization-aware tuner *chooses* to.

The loop is sequential: ask, run, tell, until the next run would overshoot
the budget (that run is not counted: "evaluations within budget").

Pipelines with a learning-curve training stage (``SyntheticPipeline.train_stage``,
see ``tuners.synthetic.LearningCurveStage``) get the epochs fidelity: a
candidate's ``epochs`` attribute (``tuners.mf.MFCandidate``; a stage-level
tuner's candidates have none and train to ``max_epochs``) says how far to
train.  The simulated cache then also keeps a checkpoint of the training
stage at every epoch boundary it passed, per training-stage prefix, and the
downstream outputs per (prefix, epochs): continuing a configuration from its
``e``-epoch checkpoint to ``E`` costs the load of its upstream stages and of
the checkpoint plus ``E - e`` epochs plus the downstream stages
(freeze-thaw).  ``tuners.mf.MFCacheView.plan`` is the one rule for hits, used
by the simulator and by the tuners that price candidates.  Pipelines without
such a stage run exactly as before.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from tuners.base import CachedPrefix, CacheView, Candidate, Tuner
from tuners.mf.core import CheckpointEntry, MFCacheView, RunPlan, fidelity_key
from tuners.space import prefix_key
from tuners.synthetic import SyntheticPipeline

__all__ = ["Trace", "simulate"]


@dataclass
class Trace:
    """What happened in one simulated tuning run.

    ``history`` has one dict per evaluation: ``spent`` (cumulative cost after
    it), ``cost``, ``objective``, ``best`` (best so far), ``cached_depth``
    (stages loaded from cache), ``prefix_depth`` (stages the tuner meant to
    reuse), ``ask_s`` (seconds ``ask`` took), ``source``, ``eta``, ``params``.
    """

    tuner: str
    pipeline: str
    budget: float
    seed: int
    warmup: int
    history: list[dict[str, Any]] = field(default_factory=list)
    max_epochs: int | None = None  # set for learning-curve pipelines

    @property
    def n_evaluations(self) -> int:
        """Evaluations told within budget; a promoted trial counts once per rung."""
        return len(self.history)

    @property
    def n_trials(self) -> int:
        """Distinct trials (configurations started); equals ``n_evaluations`` for stage-level tuners."""
        return len({h.get("trial", h["id"]) for h in self.history})

    @property
    def n_full(self) -> int:
        """Evaluations with the training stage at ``max_epochs`` (all of them without a fidelity)."""
        if self.max_epochs is None:
            return len(self.history)
        return sum(h.get("epochs") == self.max_epochs for h in self.history)

    @property
    def best_full(self) -> float:
        """Best objective among full-epoch evaluations (``-inf`` if none)."""
        vals = [
            h["objective"] for h in self.history
            if self.max_epochs is None or h.get("epochs") == self.max_epochs
        ]
        return max(vals) if vals else float("-inf")

    def spent_to_reach(self, target: float) -> float | None:
        """Cumulative cost at the first evaluation whose best-so-far is ``>= target`` (``None``: never)."""
        return first_reach(((h["spent"], h["best"]) for h in self.history), target)

    @property
    def best_objective(self) -> float:
        return self.history[-1]["best"] if self.history else float("-inf")

    @property
    def best_after_warmup(self) -> float:
        """Best objective once the warm-up evaluations are done (the baseline for improvement)."""
        if not self.history:
            return float("-inf")
        return self.history[min(self.warmup, len(self.history)) - 1]["best"]

    @property
    def improvement(self) -> float:
        """Best at the end minus best at the end of the warm-up."""
        return self.best_objective - self.best_after_warmup

    @property
    def spent(self) -> float:
        return self.history[-1]["spent"] if self.history else 0.0

    @property
    def ask_seconds(self) -> list[float]:
        """Seconds per ask, after the warm-up (the model-based asks)."""
        return [h["ask_s"] for h in self.history[self.warmup :]]

    @property
    def reuse_fraction(self) -> float:
        """Fraction of post-warm-up evaluations that loaded at least one stage from cache."""
        post = self.history[self.warmup :]
        return sum(h["cached_depth"] > 0 for h in post) / len(post) if post else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "tuner": self.tuner,
            "pipeline": self.pipeline,
            "budget": self.budget,
            "seed": self.seed,
            "warmup": self.warmup,
            "history": self.history,
            "max_epochs": self.max_epochs,
        }


def first_reach(points: Iterable[tuple[float, float | None]], target: float) -> float | None:
    """The spent budget of the first ``(spent, value)`` whose value reaches ``target``
    (to 1e-12; ``None``: never): when a study first matched a reference's best."""
    for spent, value in points:
        if value is not None and value >= target - 1e-12:
            return float(spent)
    return None


def simulate(
    tuner: Tuner,
    pipeline: SyntheticPipeline,
    budget: float,
    seed: int = 0,
    max_evaluations: int | None = None,
) -> Trace:
    """Tune ``pipeline`` with ``tuner`` until ``budget`` is spent; return the trace.

    ``seed`` drives the objective noise (if ``pipeline.noise_std > 0``).  On a
    learning-curve pipeline the epochs fidelity and checkpoints apply (module
    docstring); history entries then also carry ``epochs``, ``trial``,
    ``rung`` and ``trained_from`` (the epoch count training started from).
    """
    if pipeline.train_stage is not None:
        return _simulate_fidelity(tuner, pipeline, budget, seed, max_evaluations)
    rng = np.random.default_rng(seed)
    s = len(pipeline.stages)
    cache: dict[str, CachedPrefix] = {}
    trace = Trace(tuner.name, pipeline.name, float(budget), seed, tuner.warmup)
    spent, best = 0.0, float("-inf")
    while max_evaluations is None or trace.n_evaluations < max_evaluations:
        t0 = time.perf_counter()
        cand = tuner.ask(CacheView(list(cache.values())))
        ask_s = time.perf_counter() - t0
        params = cand.params
        depth = 0
        while depth < s and prefix_key(params[: depth + 1]) in cache:
            depth += 1
        compute = pipeline.stage_costs(params)
        costs = [pipeline.load_cost if k < depth else compute[k] for k in range(s)]
        cost = sum(costs)
        if spent + cost > budget:
            break
        objective = pipeline.objective(params)
        if pipeline.noise_std > 0:
            objective += float(rng.normal(0.0, pipeline.noise_std))
        spent += cost
        best = max(best, objective)
        tuner.tell(cand, objective, costs, [k < depth for k in range(s)])
        for d in range(1, s + 1):
            key = prefix_key(params[:d])
            if key not in cache:
                cache[key] = CachedPrefix(tuple(dict(p) for p in params[:d]), (pipeline.load_cost,) * d)
        trace.history.append(_history_row(cand, ask_s, spent, cost, objective, best, depth))
    return trace


def _history_row(cand: Candidate, ask_s: float, spent: float, cost: float, objective: float,
                 best: float, cached_depth: int, **fidelity: Any) -> dict[str, Any]:
    """One evaluation of a trace (``fidelity``: trial, rung, epochs, trained_from)."""
    return {"id": cand.id, **fidelity, "spent": spent, "cost": cost, "objective": objective,
            "best": best, "cached_depth": cached_depth, "prefix_depth": cand.prefix_depth,
            "ask_s": ask_s, "source": cand.source, "eta": cand.eta, "params": cand.params}


class _FidelityStore:
    """The simulated store of a learning-curve pipeline (unlimited capacity)."""

    def __init__(self, n_stages: int, train_stage: int, max_epochs: int, load_cost: float) -> None:
        self.s, self.t, self.max_epochs, self.load = n_stages, train_stage, max_epochs, load_cost
        self.prefixes: dict[str, CachedPrefix] = {}
        self.checkpoints: dict[str, tuple[tuple[dict[str, Any], ...], set[int]]] = {}
        self.outputs: set[str] = set()

    def view(self) -> MFCacheView:
        return MFCacheView(
            list(self.prefixes.values()),
            train_stage=self.t,
            checkpoints={
                k: CheckpointEntry(p, tuple(sorted(e))) for k, (p, e) in self.checkpoints.items()
            },
            outputs=frozenset(self.outputs),
        )

    def _add_prefix(self, params: list[dict[str, Any]], d: int) -> None:
        key = prefix_key(params[:d])
        if key not in self.prefixes:
            self.prefixes[key] = CachedPrefix(tuple(dict(p) for p in params[:d]), (self.load,) * d)

    def record(self, params: list[dict[str, Any]], epochs: int, plan: RunPlan) -> None:
        """After a run: upstream prefixes, every epoch boundary passed, downstream outputs."""
        t = self.t
        for d in range(1, t + 1):
            self._add_prefix(params, d)
        key = prefix_key(params[: t + 1])
        entry = self.checkpoints.setdefault(key, (tuple(dict(p) for p in params[: t + 1]), set()))
        entry[1].update(range(plan.trained_from(t, epochs) + 1, epochs + 1))
        for k in range(t + 1, self.s):
            self.outputs.add(fidelity_key(params[: k + 1], epochs))
        if epochs == self.max_epochs:  # the stage-level view: full-epoch prefixes
            for d in range(t + 1, self.s + 1):
                self._add_prefix(params, d)


def _simulate_fidelity(
    tuner: Tuner,
    pipeline: SyntheticPipeline,
    budget: float,
    seed: int,
    max_evaluations: int | None,
) -> Trace:
    """``simulate`` on a pipeline with a learning-curve stage (epochs fidelity, checkpoints)."""
    rng = np.random.default_rng(seed)
    s = len(pipeline.stages)
    t, big_e = int(pipeline.train_stage), int(pipeline.max_epochs)  # type: ignore[arg-type]
    train = pipeline.stages[t]
    store = _FidelityStore(s, t, big_e, pipeline.load_cost)
    trace = Trace(tuner.name, pipeline.name, float(budget), seed, tuner.warmup, max_epochs=big_e)
    spent, best = 0.0, float("-inf")
    while max_evaluations is None or trace.n_evaluations < max_evaluations:
        view = store.view()
        t0 = time.perf_counter()
        cand = tuner.ask(view)
        ask_s = time.perf_counter() - t0
        params = cand.params
        epochs = int(getattr(cand, "epochs", 0) or big_e)
        if not 1 <= epochs <= big_e:
            raise ValueError(f"candidate asks for {epochs} epochs, pipeline has 1..{big_e}")
        plan = view.plan(params, epochs)
        compute = pipeline.stage_costs_at(params, epochs)
        costs = []
        for k in range(s):
            if plan.cached[k]:
                costs.append(pipeline.load_cost)
            elif k == t and plan.resume_from > 0:
                extra = train.cost_for(params[t], epochs - plan.resume_from)  # type: ignore[attr-defined]
                costs.append(pipeline.load_cost + extra)
            else:
                costs.append(compute[k])
        cost = sum(costs)
        if spent + cost > budget:
            break
        objective = pipeline.objective_at(params, epochs)
        if pipeline.noise_std > 0:
            objective += float(rng.normal(0.0, pipeline.noise_std))
        spent += cost
        best = max(best, objective)
        trained_from = plan.trained_from(t, epochs)
        if hasattr(cand, "resumed_from"):
            cand.resumed_from = trained_from  # the run reports where training started
        tuner.tell(cand, objective, costs, plan.cached)
        store.record(params, epochs, plan)
        trace.history.append(_history_row(
            cand, ask_s, spent, cost, objective, best, _leading_hits(plan.cached),
            trial=getattr(cand, "trial", cand.id), rung=getattr(cand, "rung", 0), epochs=epochs,
            trained_from=trained_from))
    return trace


def _leading_hits(flags: list[bool]) -> int:
    """Number of leading cache hits (stages loaded before the first computed one)."""
    n = 0
    while n < len(flags) and flags[n]:
        n += 1
    return n
