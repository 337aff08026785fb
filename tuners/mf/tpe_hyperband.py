"""TPE + Hyperband through Optuna's ask/tell: the practitioner's multi-fidelity baseline.

Optuna's ``TPESampler`` proposes new trials and its ``HyperbandPruner``
(``min_resource`` = first rung, ``max_resource`` = last rung, the same
reduction factor) decides at every rung: the segment's objective is
``trial.report(value, step=epochs)``-ed, then ``trial.should_prune()``.  A
trial that survives continues at the next ask (depth first, as an Optuna
objective function would: report, check, keep training) from its checkpoint;
a pruned one is told ``PRUNED``, a trial at the last rung ``COMPLETE``.  The
shared warm-up configurations are enqueued; the Optuna plumbing is ``tuners.tpe.OptunaBridge``.

Determinism: a fixed study name (Hyperband assigns brackets by a hash of
study name and trial number), a fresh ``TPESampler`` seeded from ``(seed,
ask index)`` per proposal, and ``load_state_dict`` replays the trials
(including the duplicate proposals that were discarded) into a new study.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from optuna.pruners import HyperbandPruner
from optuna.trial import Trial, TrialState

from tuners.base import CacheView, Candidate, Observation
from tuners.mf.core import MFCandidate, RungTuner, TrialRecord
from tuners.space import SearchSpace
from tuners.tpe import OptunaBridge

__all__ = ["TPEHyperband"]


class TPEHyperband(RungTuner):
    """Optuna TPE sampler + HyperbandPruner on the shared rung code path."""

    name = "tpe-hyperband"

    def __init__(self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10, *,
                 sampler_kwargs: Mapping[str, Any] | None = None, **rung: Any) -> None:
        super().__init__(space, budget, seed, warmup, **rung)
        self._optuna = OptunaBridge(space, self.seed, warmup, sampler_kwargs)
        self._new_study()

    # ------------------------------------------------------------------ optuna plumbing
    def _new_study(self) -> None:
        self._study = self._optuna.study(
            study_name=f"memotune-tpe-hyperband-{self.seed}",
            pruner=HyperbandPruner(
                min_resource=self.rungs[0],
                max_resource=self.rungs[-1],
                reduction_factor=self.reduction_factor,
            ),
        )
        self._otrials: dict[int, Trial] = {}  # our trial number -> optuna trial

    def _enqueue(self, number: int, params: list[dict[str, Any]]) -> None:
        self._otrials[number] = self._optuna.enqueue(self._study, params)

    # ------------------------------------------------------------------ rung hooks
    def _propose_new(self, cache_view: CacheView, index: int, trial: int) -> Candidate:
        found = self._optuna.propose(self._study, index, self.known_keys())
        if found is None:
            return self.random_candidate(trial, "random")  # enqueued by _on_new_trial
        self._otrials[trial] = found[0]
        return Candidate(params=found[1], prefix_depth=0, source="tpe")

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
                self._study.tell(self._optuna.ask(self._study), state=TrialState.FAIL)
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
