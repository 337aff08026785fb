"""Optuna's TPE through Optuna's own ask/tell: the practitioner's baseline.

The only module that imports optuna.  The shared random warm-up of the base
class is fed to the study as enqueued trials (so TPE starts from the same
configurations as every other tuner), then ``TPESampler`` (Optuna defaults:
multivariate TPE, constant liar for pending trials) proposes.  TPE knows
nothing of costs or the cache.

Determinism: a fresh ``TPESampler`` seeded from ``(seed, ask index)`` is set
before each proposal, and ``load_state_dict`` rebuilds the study by replaying
every candidate in ask order (enqueue + ask, then tell if finished), so a
resumed tuner proposes what the uninterrupted one would.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import TPESampler
from optuna.trial import Trial, TrialState

from tuners.base import CacheView, Candidate, Observation, Tuner
from tuners.space import CategoricalParam, FloatParam, SearchSpace, prefix_key

__all__ = ["TPETuner"]


class TPETuner(Tuner):
    """Optuna ``TPESampler`` behind the tuner interface.

    Extra keyword arguments go to ``TPESampler`` (e.g. ``multivariate=False``).
    """

    name = "tpe"

    def __init__(
        self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10, **sampler_kwargs: Any
    ) -> None:
        super().__init__(space, budget, seed, warmup)
        self._sampler_kwargs = sampler_kwargs
        self._dists: dict[str, BaseDistribution] = {}
        for k, stage in enumerate(space.stages):
            for p in stage:
                if isinstance(p, FloatParam):
                    dist: BaseDistribution = FloatDistribution(p.low, p.high, log=p.log)
                elif isinstance(p, CategoricalParam):
                    dist = CategoricalDistribution(list(p.choices))
                else:
                    dist = IntDistribution(p.low, p.high, log=p.log)
                self._dists[self._flat_name(k, p.name)] = dist
        self._new_study()

    @staticmethod
    def _flat_name(k: int, name: str) -> str:
        return f"{k}:{name}"

    def _flat(self, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {self._flat_name(k, n): v for k, p in enumerate(params) for n, v in p.items()}

    def _unflat(self, flat: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            self.space.canonicalize(k, {p.name: flat[self._flat_name(k, p.name)] for p in stage})
            for k, stage in enumerate(self.space.stages)
        ]

    def _sampler(self, index: int) -> TPESampler:
        seed = (self.seed * 1_000_003 + index) % (2**31)
        return TPESampler(seed=seed, n_startup_trials=self.warmup, **self._sampler_kwargs)

    def _new_study(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(direction="maximize", sampler=self._sampler(0))
        self._trials: dict[int, Trial] = {}

    def _enqueue(self, cand_id: int, params: list[dict[str, Any]]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._study.enqueue_trial(self._flat(params), skip_if_exists=False)
            self._trials[cand_id] = self._study.ask(self._dists)

    # ------------------------------------------------------------------ hooks
    def _propose(self, cache_view: CacheView, index: int) -> Candidate:
        known = self.known_keys()
        self._study.sampler = self._sampler(index)
        for _ in range(20):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                trial = self._study.ask(self._dists)
            params = self._unflat(trial.params)
            if prefix_key(params) not in known:
                self._trials[index] = trial
                return Candidate(params=params, prefix_depth=0, source="tpe")
            self._study.tell(trial, state=TrialState.FAIL)  # duplicate: discard, ask again
        return self.random_candidate(index, "random")  # enqueued by _after_ask

    def _after_ask(self, candidate: Candidate) -> None:
        if candidate.id not in self._trials:
            self._enqueue(candidate.id, candidate.params)

    def _after_tell(self, observation: Observation) -> None:
        trial = self._trials.pop(observation.id, None)
        if trial is None:  # told without a matching ask: record it anyway
            self._enqueue(observation.id, observation.params)
            trial = self._trials.pop(observation.id)
        if observation.objective is None:
            self._study.tell(trial, state=TrialState.FAIL)
        else:
            self._study.tell(trial, observation.objective)

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self._new_study()
        records: list[tuple[int, list[dict[str, Any]], Observation | None]] = [
            (o.id, o.params, o) for o in self.observations
        ] + [(c.id, c.params, None) for c in self.pending.values()]
        for cid, params, obs in sorted(records, key=lambda r: r[0]):
            self._enqueue(cid, params)
            if obs is not None:
                trial = self._trials.pop(cid)
                if obs.objective is None:
                    self._study.tell(trial, state=TrialState.FAIL)
                else:
                    self._study.tell(trial, obs.objective)
