"""Optuna's TPE through Optuna's own ask/tell: the practitioner's baseline.

``OptunaBridge`` is the Optuna plumbing (``tuners.mf.tpe_hyperband`` shares it).
The shared random warm-up of the base class is fed to the study as enqueued
trials (so TPE starts from the same
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

__all__ = ["OptunaBridge", "TPETuner"]


class OptunaBridge:
    """The search space as an Optuna study sees it, for every Optuna-backed tuner.

    Distributions under flat names ``"<stage index>:<param>"``, a ``TPESampler``
    seeded from ``(seed, ask index)`` for each proposal, enqueued trials (the
    shared warm-up, replays on resume) and new TPE proposals that skip
    configurations already known.
    """

    def __init__(self, space: SearchSpace, seed: int, warmup: int,
                 sampler_kwargs: Mapping[str, Any] | None = None) -> None:
        self.space, self.seed, self.warmup = space, seed, warmup
        self.sampler_kwargs = dict(sampler_kwargs or {})
        self.dists: dict[str, BaseDistribution] = {}
        for k, stage in enumerate(space.stages):
            for p in stage:
                if isinstance(p, FloatParam):
                    dist: BaseDistribution = FloatDistribution(p.low, p.high, log=p.log)
                elif isinstance(p, CategoricalParam):
                    dist = CategoricalDistribution(list(p.choices))
                else:
                    dist = IntDistribution(p.low, p.high, log=p.log)
                self.dists[f"{k}:{p.name}"] = dist

    def flat(self, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {f"{k}:{n}": v for k, p in enumerate(params) for n, v in p.items()}

    def unflat(self, flat: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            self.space.canonicalize(k, {p.name: flat[f"{k}:{p.name}"] for p in stage})
            for k, stage in enumerate(self.space.stages)
        ]

    def sampler(self, index: int) -> TPESampler:
        seed = (self.seed * 1_000_003 + index) % (2**31)
        return TPESampler(seed=seed, n_startup_trials=self.warmup, **self.sampler_kwargs)

    def study(self, **kwargs: Any) -> optuna.Study:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        return optuna.create_study(direction="maximize", sampler=self.sampler(0), **kwargs)

    def ask(self, study: optuna.Study) -> Trial:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return study.ask(self.dists)

    def enqueue(self, study: optuna.Study, params: list[dict[str, Any]]) -> Trial:
        """The trial of exactly ``params`` (enqueued, then asked)."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            study.enqueue_trial(self.flat(params), skip_if_exists=False)
        return self.ask(study)

    def propose(self, study: optuna.Study, index: int,
                known: set[str]) -> tuple[Trial, list[dict[str, Any]]] | None:
        """A TPE proposal not in ``known`` (duplicates are told FAIL), or None after 20 tries."""
        study.sampler = self.sampler(index)
        for _ in range(20):
            trial = self.ask(study)
            params = self.unflat(trial.params)
            if prefix_key(params) not in known:
                return trial, params
            study.tell(trial, state=TrialState.FAIL)  # duplicate: discard, ask again
        return None


class TPETuner(Tuner):
    """Optuna ``TPESampler`` behind the tuner interface.

    Extra keyword arguments go to ``TPESampler`` (e.g. ``multivariate=False``).
    """

    name = "tpe"

    def __init__(
        self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10, **sampler_kwargs: Any
    ) -> None:
        super().__init__(space, budget, seed, warmup)
        self._optuna = OptunaBridge(space, self.seed, warmup, sampler_kwargs)
        self._new_study()

    def _new_study(self) -> None:
        self._study = self._optuna.study()
        self._trials: dict[int, Trial] = {}

    def _enqueue(self, cand_id: int, params: list[dict[str, Any]]) -> None:
        self._trials[cand_id] = self._optuna.enqueue(self._study, params)

    # ------------------------------------------------------------------ hooks
    def _propose(self, cache_view: CacheView, index: int) -> Candidate:
        found = self._optuna.propose(self._study, index, self.known_keys())
        if found is None:
            return self.random_candidate(index, "random")  # enqueued by _after_ask
        self._trials[index] = found[0]
        return Candidate(params=found[1], prefix_depth=0, source="tpe")

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
