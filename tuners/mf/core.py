"""The one code path of every multi-fidelity tuner: rungs over the training stage's epochs.

A *trial* is one configuration's life across rungs (e.g. 1, 3, 9 epochs with
reduction factor 3).  Each rung is one ask/tell round trip, a *segment*: the
first trains the trial's training stage from scratch to ``rungs[0]`` epochs,
a promotion continues it from its checkpoint to the next rung (freeze-thaw:
only the extra epochs and the downstream stages are paid for).  The caller
runs a segment like any candidate; ``MFCandidate.epochs`` says how far to
train, and the runner reports in ``resumed_from`` where it actually started.

``RungTuner`` owns the trials, the promotions, the shared warm-up and the
JSON state; the algorithms differ only in two hooks:

* ``_promotion()``: which paused trial continues next (ASHA: a trial in the
  top ``1/eta`` of its rung; one-epoch-top-K: the top K of a finished
  bracket; TPE+Hyperband: whatever Optuna's pruner did not prune);
* ``_propose_new()``: the configuration of a new trial (random, TPE, EEIPU).

A promoted trial counts once per rung in "trials completed" (one tell each).

The cache a multi-fidelity tuner sees is ``MFCacheView``: the stage-level
cached prefixes of ``CacheView`` plus the training stage's epoch-boundary
checkpoints (per training-stage prefix) and the downstream outputs computed
on a checkpoint.  ``MFCacheView.plan`` is the single rule for what a run of
``(params, epochs)`` loads, resumes and computes; the simulator charges by
it and EEIPU-MF prices candidates by it.
"""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from tuners.base import CacheView, Candidate, Observation, Tuner
from tuners.space import SearchSpace, prefix_key

__all__ = [
    "RUNG_ARGS",
    "CheckpointEntry",
    "MFCacheView",
    "MFCandidate",
    "RunPlan",
    "RungTuner",
    "ASHA",
    "OneEpochTopK",
    "TrialRecord",
    "fidelity_key",
    "geometric_rungs",
]


# RungTuner's keyword args: the algorithms take these and pass them on
RUNG_ARGS = ("train_stage", "max_epochs", "min_epochs", "reduction_factor", "rungs")
# A rung is *blind* when at least BLIND_TIED of its (at least BLIND_LEAST) results are one
# value, e.g. accuracy at chance before training leaves its plateau: it cannot rank.
BLIND_TIED, BLIND_LEAST = 0.75, 6


def tied_majority(values: Sequence[float]) -> tuple[float, int] | None:
    """(value, count) when ``values`` are blind by the rule above, else None."""
    if len(values) < BLIND_LEAST:
        return None
    value, n = Counter(round(v, 6) for v in values).most_common(1)[0]
    return (value, n) if n >= BLIND_TIED * len(values) else None


def geometric_rungs(min_epochs: int, max_epochs: int, reduction_factor: int) -> list[int]:
    """``min, min*eta, min*eta^2, ...`` capped at and ending with ``max_epochs`` (1, 3, 9)."""
    if not 1 <= min_epochs <= max_epochs or reduction_factor < 2:
        raise ValueError(f"need 1 <= min_epochs <= max_epochs and eta >= 2, got "
                         f"{min_epochs}, {max_epochs}, {reduction_factor}")
    rungs = [min_epochs]
    while rungs[-1] * reduction_factor < max_epochs:
        rungs.append(rungs[-1] * reduction_factor)
    if rungs[-1] != max_epochs:
        rungs.append(max_epochs)
    return rungs


def fidelity_key(params: Sequence[Mapping[str, Any]], epochs: int) -> str:
    """Key of a stage output computed on the ``epochs``-epoch checkpoint (stages after training)."""
    return f"{int(epochs)}|{prefix_key(params)}"


@dataclass
class MFCandidate(Candidate):
    """A segment: run ``params`` with the training stage trained to ``epochs`` epochs.

    ``trial``/``rung``: which trial and rung this segment is; ``resume_epochs``:
    the checkpoint the tuner expects to continue from (0 = from scratch).
    ``resumed_from`` is filled in by the runner before ``tell``: the epoch
    count the training stage actually started from (``epochs`` when the
    checkpoint itself was loaded, 0 when trained from scratch).
    """

    trial: int = -1
    rung: int = 0
    epochs: int = 0
    resume_epochs: int = 0
    resumed_from: int | None = None


@dataclass(frozen=True)
class CheckpointEntry:
    """Epoch-boundary checkpoints of one training-stage prefix ``(x_1..x_t)``."""

    params: tuple[Mapping[str, Any], ...]
    epochs: tuple[int, ...]


@dataclass
class RunPlan:
    """What a run loads and computes: ``cached[k]`` per stage, and the training resume point."""

    cached: list[bool]
    resume_from: int  # checkpoint the training stage continues from (0: scratch; meaningless if cached)

    def trained_from(self, train_stage: int, epochs: int) -> int:
        """Epoch count the training stage starts from (``epochs`` when loaded outright)."""
        if train_stage < len(self.cached) and self.cached[train_stage]:
            return int(epochs)
        return int(self.resume_from)


@dataclass
class MFCacheView(CacheView):
    """``CacheView`` plus the training stage's epoch checkpoints.

    ``prefixes`` keep their stage-level meaning (a prefix through or past the
    training stage is listed only when trained to the full epoch count), so a
    stage-level tuner can be handed this view unchanged.  ``checkpoints``:
    ``prefix_key(x_1..x_t)`` -> the epoch boundaries saved for it;
    ``outputs``: ``fidelity_key`` of every downstream stage output computed
    on a checkpoint.
    """

    train_stage: int = 0
    checkpoints: dict[str, CheckpointEntry] = field(default_factory=dict)
    outputs: frozenset[str] = frozenset()

    def checkpoint_epochs(self, params: Sequence[Mapping[str, Any]]) -> tuple[int, ...]:
        """Saved epoch boundaries of the training-stage prefix of ``params`` (empty if none)."""
        if len(params) <= self.train_stage:
            return ()
        entry = self.checkpoints.get(prefix_key(params[: self.train_stage + 1]))
        return entry.epochs if entry is not None else ()

    def plan(self, params: Sequence[Mapping[str, Any]], epochs: int) -> RunPlan:
        """Cache hits of a run of ``params`` (a full config or a prefix) to ``epochs`` epochs.

        Upstream stages hit as stage-level prefixes; the training stage hits when
        the checkpoint at exactly ``epochs`` exists, else resumes from the latest
        earlier one; a downstream stage hits only on an exact ``epochs`` hit of
        the training stage and an output computed on that checkpoint.
        """
        t, n = self.train_stage, len(params)
        cached = [False] * n
        d = 0
        while d < min(n, t) and prefix_key(params[: d + 1]) in self._index:
            cached[d] = True
            d += 1
        resume = 0
        if d == t and n > t:
            ck = self.checkpoint_epochs(params)
            if epochs in ck:
                cached[t] = True
                k = t + 1
                while k < n and fidelity_key(params[: k + 1], epochs) in self.outputs:
                    cached[k] = True
                    k += 1
            else:
                resume = max((c for c in ck if c < epochs), default=0)
        return RunPlan(cached, resume)


@dataclass
class TrialRecord:
    """One configuration across rungs.

    ``values[r]``: objective told at rung ``r`` (``None``: not reached, or failed);
    ``rung``: highest rung started; ``epochs``: checkpoint reached;
    ``status``: ``running`` (a segment is out), ``paused`` (may be promoted),
    ``done`` (top rung reached), ``pruned``, ``failed``.
    """

    number: int
    params: list[dict[str, Any]]
    values: list[float | None]
    rung: int = 0
    epochs: int = 0
    status: str = "running"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> float | None:
        vals = [v for v in self.values if v is not None]
        return max(vals) if vals else None


class RungTuner(Tuner):
    """Successive-halving rungs over the training stage's epochs, ask/tell.

    Args (beyond ``Tuner``'s):
        train_stage: index of the stage whose epochs are the fidelity
            (default: the last stage).
        max_epochs / min_epochs / reduction_factor: rungs ``geometric_rungs``
            (1, 3, 9 by default), unless ``rungs`` lists them.
    ``warmup``: the first ``warmup`` *new trials* are the shared random design
    (the same configurations the stage-level tuners start from).
    """

    name = "rung"
    skip_blind_rungs: bool = False  # start new trials above rungs that cannot rank

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
    ) -> None:
        super().__init__(space, budget, seed, warmup)
        self.train_stage = space.n_stages - 1 if train_stage is None else int(train_stage)
        if not 0 <= self.train_stage < space.n_stages:
            raise ValueError(f"train_stage {train_stage} out of range for {space.n_stages} stages")
        self.reduction_factor = int(reduction_factor)
        self.rungs = (
            [int(r) for r in rungs] if rungs else geometric_rungs(min_epochs, max_epochs, reduction_factor)
        )
        if any(b <= a for a, b in zip(self.rungs, self.rungs[1:], strict=False)) or self.rungs[0] < 1:
            raise ValueError(f"rungs must be increasing positive epoch counts, got {self.rungs}")
        self.max_epochs = self.rungs[-1]
        self.trials: list[TrialRecord] = []
        self.segments: dict[int, dict[str, int]] = {}  # observation id -> epochs, trained_from, rung, trial
        self.pending_segment: dict[int, MFCandidate] = {}  # the same objects as ``pending``

    # ------------------------------------------------------------------ ask / tell
    def ask(self, cache_view: CacheView | None = None) -> MFCandidate:
        """Promote a paused trial if the rule says so, else start a new trial at rung 0."""
        view = cache_view if cache_view is not None else CacheView.empty()
        index = self.n_asked
        number = self._promotion()
        if number is not None:
            tr = self.trials[number]
            r = tr.rung + 1
            cand = MFCandidate(
                params=copy.deepcopy(tr.params), prefix_depth=self.train_stage, source="promote",
                trial=number, rung=r, epochs=self.rungs[r], resume_epochs=tr.epochs,
            )
            tr.rung, tr.status = r, "running"
        else:
            j = len(self.trials)
            if j < self.warmup:
                base = self.random_candidate(j, "warmup")
            else:
                if self.b0 is None:
                    self.b0 = self.spent  # warm-up ended: cost cooling starts from here
                base = self._propose_new(view, index, j)
            r0 = self.start_rung()
            cand = MFCandidate(
                params=base.params, prefix_depth=base.prefix_depth, source=base.source,
                acq_value=base.acq_value, eta=base.eta, expected_cost=base.expected_cost,
                trial=j, rung=r0, epochs=self.rungs[r0], resume_epochs=0,
            )
            tr = TrialRecord(j, copy.deepcopy(base.params), [None] * len(self.rungs), rung=r0)
            self.trials.append(tr)
            self._on_new_trial(tr)
        cand.id = index
        self.n_asked += 1
        self.pending[index] = cand
        self._after_ask(cand)
        return cand

    def _after_tell(self, observation: Observation) -> None:
        cand = self.pending_segment.pop(observation.id, None)
        if cand is None:  # told something this tuner never asked: keep it as data only
            return
        tr = self.trials[cand.trial]
        trained_from = cand.resumed_from
        if trained_from is None:  # runner did not report: cached flag, else the plan we asked for
            t = self.train_stage
            trained_from = cand.epochs if observation.cached[t] else cand.resume_epochs
        self.segments[observation.id] = {
            "trial": cand.trial, "rung": cand.rung, "epochs": cand.epochs,
            "trained_from": int(trained_from),
        }
        tr.values[cand.rung] = observation.objective
        if observation.objective is None:
            tr.status = "failed"
        else:
            tr.epochs = cand.epochs
            tr.status = "done" if cand.rung == len(self.rungs) - 1 else "paused"
        self._on_result(tr, cand, observation)

    def _after_ask(self, candidate: Candidate) -> None:
        self.pending_segment[candidate.id] = candidate  # type: ignore[assignment]

    def start_rung(self) -> int:
        """The rung new trials start at: 0, or with ``skip_blind_rungs`` the first
        rung that is not blind (``tied_majority``); the top rung at the most."""
        r = 0
        while (self.skip_blind_rungs and r < len(self.rungs) - 1 and tied_majority(
                [v for tr in self.trials if (v := tr.values[r]) is not None]) is not None):
            r += 1
        return r

    # ------------------------------------------------------------------ plugin hooks
    def _promotion(self) -> int | None:
        """ASHA (Li et al. 2020): from the top rung down, a paused trial in its rung's top ``1/eta``."""
        last = len(self.rungs) - 1
        for r in reversed(range(last)):
            done = [(tr.values[r], -tr.number) for tr in self.trials if tr.values[r] is not None]
            k = len(done) // self.reduction_factor
            if k == 0:
                continue
            done.sort(reverse=True)
            for _, neg in done[:k]:
                tr = self.trials[-neg]
                if tr.rung == r and tr.status == "paused":
                    return tr.number
        return None

    def _propose_new(self, cache_view: CacheView, index: int, trial: int) -> Candidate:
        """The configuration of new trial number ``trial`` (after the warm-up): random here."""
        return self.random_candidate(trial, "random")

    def _on_new_trial(self, trial: TrialRecord) -> None:
        """Called once per new trial, right after it is created."""
        return None

    def _on_result(self, trial: TrialRecord, cand: MFCandidate, observation: Observation) -> None:
        """Called after a segment's result is recorded on its trial."""
        return None

    def _propose(self, cache_view: CacheView, index: int) -> Candidate:
        """Tuner's hook for stage-level asks; never called, since `ask` chooses between a
        promotion and `_propose_new`."""
        raise TypeError(f"{type(self).__name__} proposes through ask(): promotions or "
                        f"_propose_new, never Tuner._propose")

    # ------------------------------------------------------------------ views for reports
    def trial_epochs(self) -> dict[int, int]:
        """Trial number -> checkpoint epochs reached."""
        return {tr.number: tr.epochs for tr in self.trials}

    def epochs_trained(self, observation_id: int) -> int:
        """Epochs the training stage actually ran in one told segment."""
        seg = self.segments[observation_id]
        return seg["epochs"] - seg["trained_from"]

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {
            "trials": [asdict(tr) for tr in self.trials],
            "segments": {str(k): v for k, v in self.segments.items()},
            "rungs": list(self.rungs),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """As ``Tuner.load_state_dict``; pending segments come back as ``MFCandidate``."""
        if list((state.get("extra") or {}).get("rungs") or []) != self.rungs:
            raise ValueError("state was saved with different rungs")
        base = dict(state)
        base["pending"] = []
        super().load_state_dict(base)
        self.pending = {int(c["id"]): MFCandidate.from_dict(c) for c in state["pending"]}  # type: ignore[misc]
        self.pending_segment = dict(self.pending)  # type: ignore[arg-type]

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self.trials = [TrialRecord(**copy.deepcopy(dict(t))) for t in extra.get("trials", [])]
        self.segments = {int(k): dict(v) for k, v in (extra.get("segments") or {}).items()}


class ASHA(RungTuner):
    """ASHA (Li et al., MLSys 2020) with uniformly random new trials."""

    name = "asha"


class OneEpochTopK(RungTuner):
    """Train every candidate ``rungs[0]`` epochs, continue the top ``top_k`` of each bracket to the end.

    The "one epoch is all you need" baseline of Egele et al. 2023: brackets of
    ``bracket_size`` random new trials at 1 epoch; once a bracket's results
    are in, its ``top_k`` best go straight to ``max_epochs``.  Two rungs only.
    """

    name = "one-epoch-topk"

    def __init__(self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10, *,
                 bracket_size: int = 9, top_k: int = 3, **rung: Any) -> None:
        if not rung.get("rungs"):  # two rungs: the first and the last
            rung["rungs"] = [rung.get("min_epochs", 1), rung.get("max_epochs", 9)]
        super().__init__(space, budget, seed, warmup, **rung)
        if len(self.rungs) != 2 or not 1 <= top_k <= bracket_size:
            raise ValueError("one-epoch-topk needs two rungs and 1 <= top_k <= bracket_size")
        self.bracket_size, self.top_k = int(bracket_size), int(top_k)

    def _promotion(self) -> int | None:
        n = self.bracket_size
        for b in range(len(self.trials) // n):
            members = self.trials[b * n : (b + 1) * n]
            if any(m.values[0] is None and m.status not in ("failed",) for m in members):
                continue  # bracket still running at rung 0
            ranked = sorted(
                (m for m in members if m.values[0] is not None),
                key=lambda m: (m.values[0], -m.number),
                reverse=True,
            )[: self.top_k]
            for m in ranked:
                if m.rung == 0 and m.status == "paused":
                    return m.number
        return None
