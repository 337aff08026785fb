"""TPE + Hyperband through Optuna's ask/tell: the practitioner's multi-fidelity baseline.

Optuna's ``TPESampler`` proposes new trials and its ``HyperbandPruner``
(``min_resource`` = first rung, ``max_resource`` = last rung, the same
reduction factor) decides at every rung: the segment's objective is
``trial.report(value, step=epochs)``-ed, then ``trial.should_prune()``.  A
trial that survives continues at the next ask (depth first, as an Optuna
objective function would: report, check, keep training) from its checkpoint;
a pruned one is told ``PRUNED``, a trial at the last rung ``COMPLETE``.  The
shared warm-up configurations are enqueued, as in ``tuners.tpe``.

Determinism: a fixed study name (Hyperband assigns brackets by a hash of
study name and trial number), a fresh ``TPESampler`` seeded from ``(seed,
ask index)`` per proposal, and ``load_state_dict`` replays the trials
(including the duplicate proposals that were discarded) into a new study.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.pruners import HyperbandPruner
from optuna.samplers import TPESampler
from optuna.trial import Trial, TrialState

from tuners.base import CacheView, Candidate, Observation
from tuners.mf.core import MFCandidate, RungTuner, TrialRecord
from tuners.space import CategoricalParam, FloatParam, SearchSpace, prefix_key

__all__ = ["TPEHyperband"]


class TPEHyperband(RungTuner):
    """Optuna TPE sampler + HyperbandPruner on the shared rung code path."""

    name = "tpe-hyperband"

    def __init__(
        self,
        space: SearchSpace,
        budget: float,
        seed: int = 0,
        warmup: int = 10,
        *,
        train_stage: int | None = None,
        max_epochs: int = 9,
        min_epochs: int = 1,
        reduction_factor: int = 3,
        rungs: Sequence[int] | None = None,
        sampler_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(
            space, budget, seed, warmup, train_stage=train_stage, max_epochs=max_epochs,
            min_epochs=min_epochs, reduction_factor=reduction_factor, rungs=rungs,
        )
        self._sampler_kwargs = dict(sampler_kwargs or {})
        self._dists: dict[str, BaseDistribution] = {}
        for k, stage in enumerate(space.stages):
            for p in stage:
                if isinstance(p, FloatParam):
                    dist: BaseDistribution = FloatDistribution(p.low, p.high, log=p.log)
                elif isinstance(p, CategoricalParam):
                    dist = CategoricalDistribution(list(p.choices))
                else:
                    dist = IntDistribution(p.low, p.high, log=p.log)
                self._dists[f"{k}:{p.name}"] = dist
        self._new_study()

    # ------------------------------------------------------------------ optuna plumbing
    def _flat(self, params: list[dict[str, Any]]) -> dict[str, Any]:
        return {f"{k}:{n}": v for k, p in enumerate(params) for n, v in p.items()}

    def _unflat(self, flat: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [
            self.space.canonicalize(k, {p.name: flat[f"{k}:{p.name}"] for p in stage})
            for k, stage in enumerate(self.space.stages)
        ]

    def _sampler(self, index: int) -> TPESampler:
        seed = (self.seed * 1_000_003 + index) % (2**31)
        return TPESampler(seed=seed, n_startup_trials=self.warmup, **self._sampler_kwargs)

    def _new_study(self) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self._study = optuna.create_study(
            study_name=f"memotune-tpe-hyperband-{self.seed}",
            direction="maximize",
            sampler=self._sampler(0),
            pruner=HyperbandPruner(
                min_resource=self.rungs[0],
                max_resource=self.rungs[-1],
                reduction_factor=self.reduction_factor,
            ),
        )
        self._otrials: dict[int, Trial] = {}  # our trial number -> optuna trial

    def _enqueue(self, number: int, params: list[dict[str, Any]]) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self._study.enqueue_trial(self._flat(params), skip_if_exists=False)
            self._otrials[number] = self._study.ask(self._dists)

    # ------------------------------------------------------------------ rung hooks
    def _propose_new(self, cache_view: CacheView, index: int, trial: int) -> Candidate:
        known = self.known_keys()
        self._study.sampler = self._sampler(index)
        for _ in range(20):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ot = self._study.ask(self._dists)
            params = self._unflat(ot.params)
            if prefix_key(params) not in known:
                self._otrials[trial] = ot
                return Candidate(params=params, prefix_depth=0, source="tpe")
            self._study.tell(ot, state=TrialState.FAIL)  # duplicate: discard, ask again
        return self.random_candidate(trial, "random")  # enqueued by _on_new_trial

    def _on_new_trial(self, trial: TrialRecord) -> None:
        if trial.number not in self._otrials:
            self._enqueue(trial.number, trial.params)
        trial.extra["optuna_number"] = self._otrials[trial.number].number

    def _promotion(self) -> int | None:
        """Depth first: a trial the pruner let through continues right away."""
        for tr in self.trials:
            if tr.status == "paused":
                return tr.number
        return None

    def _on_result(self, trial: TrialRecord, cand: MFCandidate, observation: Observation) -> None:
        ot = self._otrials[trial.number]
        if observation.objective is None:
            self._study.tell(ot, state=TrialState.FAIL)
            return
        ot.report(observation.objective, step=cand.epochs)
        if trial.status == "done":
            self._study.tell(ot, observation.objective)
        elif ot.should_prune():
            self._study.tell(ot, state=TrialState.PRUNED)
            trial.status = "pruned"

    # ------------------------------------------------------------------ state
    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Rebuild the study: every trial in Optuna-number order, its reports and final state.

        ``should_prune`` is called after each replayed non-final report, as it
        was originally: the Successive-Halving pruner stores each trial's value
        at a rung in the trial's system attrs then, and compares later trials
        with those (the replayed decision itself is ignored; the recorded
        status is what counts).
        """
        super()._load_extra_state(extra)
        self._new_study()
        for tr in sorted(self.trials, key=lambda t: t.extra.get("optuna_number", t.number)):
            target = int(tr.extra.get("optuna_number", tr.number))
            while len(self._study.trials) < target:  # discarded duplicate proposals
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    self._study.tell(self._study.ask(self._dists), state=TrialState.FAIL)
            self._enqueue(tr.number, tr.params)
            ot = self._otrials[tr.number]
            last = len(self.rungs) - 1
            for r, v in enumerate(tr.values):
                if v is not None:
                    ot.report(v, step=self.rungs[r])
                    if r < last:  # as the original did: records the rung's value for the pruner
                        ot.should_prune()
            if tr.status == "done":
                self._study.tell(ot, tr.values[-1])
            elif tr.status == "pruned":
                self._study.tell(ot, state=TrialState.PRUNED)
            elif tr.status == "failed":
                self._study.tell(ot, state=TrialState.FAIL)
