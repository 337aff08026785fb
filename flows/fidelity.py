"""Multi-fidelity studies on the real pipeline: a rung is a run with fewer epochs.

A multi-fidelity tuner (`tuners.mf`: eeipu-mf, asha, tpe-hyperband,
one-epoch-topk) sets the epochs of one tuned training stage, the fidelity
stage (`--fidelity`; default: the last tuned stage): rung 0 trains a
configuration `rungs[0]` epochs, and a promotion asks for the same
configuration with more epochs. Nothing else is special: the pipeline's
checkpoint prefixes (`stages.params.training_boundaries`) make that run
continue from the deepest cached epoch boundary (freeze-thaw), and the run
reports where training started (`resumed_from_epoch`). An upstream fidelity
stage (e.g. STILTs' intermediate stage, usually the costly one) works the
same way; the stages after it rerun on each rung's checkpoint.

The fidelity range is the stage's `epochs` search range when it has one (the
tuner then owns `epochs`), else 1 to the config's epochs. The tuner sees the
store through `MFCacheView`: cached stage prefixes plus, per training-stage
prefix, the epoch boundaries and whole-stage entries the store holds, and
the outputs of the stages after it computed on each rung's checkpoint, which
is how EEIPU-MF prices a partly cached stage (the load plus the epochs left).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from cache.store import ArtifactStore
from flows.config import PipelineConfig, apply_params
from flows.plan import boundary_keys, stage_keys
from flows.run_records import RunSummary, Trial
from flows.study import StudyError
from stages.params import training_boundaries
from stages.pipeline import BY_NAME, STAGE_NAMES
from tuners import CacheView, Candidate, SearchSpace
from tuners.mf import MF_TUNERS, CheckpointEntry, MFCacheView, MFCandidate
from tuners.mf.core import fidelity_key, tied_majority
from tuners.space import prefix_key

__all__ = ["MF_TUNERS", "Fidelity", "StoreView", "StudySpace", "blind_first_rung", "study_space"]


@dataclass(frozen=True)
class Fidelity:
    """The training stage whose epochs a multi-fidelity tuner sets, and their range."""

    stage: str  # pipeline stage name
    index: int  # its tuner stage index
    min_epochs: int
    max_epochs: int
    resumable: bool  # its schedule has checkpoint prefixes (else a promotion retrains)

    def tuner_kwargs(self) -> dict[str, Any]:
        return {"train_stage": self.index, "min_epochs": self.min_epochs,
                "max_epochs": self.max_epochs}


@dataclass(frozen=True)
class StudySpace:
    """What a study's tuner searches, and how a candidate becomes a pipeline config."""

    space: SearchSpace
    fidelity: Fidelity | None  # None: a stage-level tuner

    def stage_params(self, cand: Candidate) -> dict[str, dict[str, Any]]:
        """{tuned stage: the params the pipeline gets}, the rung's epochs included."""
        out = {name: self.space.active_params(k, params)
               for k, (name, params) in enumerate(zip(self.space.stage_names, cand.params,
                                                      strict=True))}
        if self.fidelity is not None and isinstance(cand, MFCandidate):
            out[self.fidelity.stage] = {**out[self.fidelity.stage], "epochs": cand.epochs}
        return out

    def config(self, cfg: PipelineConfig, cand: Candidate) -> PipelineConfig:
        return apply_params(cfg, self.stage_params(cand))

    def resumed_from(self, cand: Candidate, summary: RunSummary) -> None:
        """Fill in where the rung's training started: its epochs when the stage was
        reused whole, the boundary it continued from, else 0 (from scratch)."""
        fid = self.fidelity
        if fid is None or not isinstance(cand, MFCandidate):
            return
        row = summary.stages[STAGE_NAMES.index(fid.stage)]
        if row.cached:
            cand.resumed_from = cand.epochs
        else:
            cand.resumed_from = int(summary.adapted.get(fid.stage, {}).get("resumed_from_epoch", 0))


def study_space(cfg: PipelineConfig, tuner: str, fidelity: str | None = None) -> StudySpace:
    """The search space of `cfg.search` for `tuner`; for a multi-fidelity tuner the
    `epochs` of the `fidelity` stage (default: the last tuned stage) becomes the
    fidelity (StudyError, naming the option or field, if it cannot)."""
    if tuner not in MF_TUNERS:
        if fidelity is not None:
            raise StudyError(f"--fidelity {fidelity}: only a multi-fidelity tuner "
                             f"({', '.join(MF_TUNERS)}) has a fidelity, not --tuner {tuner}")
        return StudySpace(SearchSpace.from_spec(cfg.search, STAGE_NAMES), None)
    tuned = [s for s in STAGE_NAMES if s in cfg.search]
    stage = fidelity if fidelity is not None else tuned[-1]
    if fidelity is not None and fidelity not in tuned:
        trainers = [s for s in tuned if BY_NAME[s].boundaries is not None]
        raise StudyError(f"--fidelity {fidelity}: not a tuned stage of this config (tuned "
                         f"training stages: {', '.join(trainers) or 'none'})")
    if BY_NAME[stage].boundaries is None:
        what = f"--fidelity {stage}" if fidelity is not None else (
            f"the last tuned stage, search.{stage},")
        raise StudyError(f"--tuner {tuner}: the fidelity must be a training stage; {what} "
                         f"is not one (choose one with --fidelity)")
    search = {s: dict(ps) for s, ps in cfg.search.items()}
    spec = search[stage].pop("epochs", None)
    params = cfg.stage_params(stage)
    if spec is None:
        low, high = 1, int(params["epochs"])
    elif spec.type != "int":
        raise StudyError(f"search.{stage}.epochs: a multi-fidelity tuner needs an int range "
                         f"of epochs, got type {spec.type}")
    else:
        low, high = max(1, int(spec.low)), int(spec.high)
    if high <= low:
        raise StudyError(f"--tuner {tuner}: {stage} has no epochs to stop early (epochs "
                         f"{low}..{high}); widen search.{stage}.epochs")
    if not search[stage]:
        del search[stage]
    if not search:
        raise StudyError(f"--tuner {tuner}: search has nothing to tune but {stage}.epochs, "
                         "which is the fidelity")
    space = SearchSpace.from_spec(search, STAGE_NAMES)
    if stage not in space.stage_names:
        raise StudyError(f"--tuner {tuner}: search.{stage} needs a param besides epochs "
                         "(the fidelity)")
    resumable = bool(training_boundaries({**params, "epochs": high}))
    return StudySpace(space, Fidelity(stage, space.stage_names.index(stage), low, high, resumable))


def blind_first_rung(trials: list[Trial], fidelity: Fidelity, skips: bool = False) -> str | None:
    """A warning when the first rung cannot rank (``tuners.mf.core.tied_majority``:
    most of its results are one value, e.g. accuracy at chance before the model
    leaves its plateau), so its promotions are by chance. `skips`: the tuner then
    starts new trials higher up (eeipu-mf)."""
    tie = tied_majority([t.objective for t in trials if t.rung == 0 and t.objective is not None])
    if tie is None:
        return None
    value, n = tie
    first = sum(t.rung == 0 and t.objective is not None for t in trials)
    then = ("new trials start at the next rung that ranks" if skips else
            "its promotions are by chance")
    return (f"{n} of {first} first-rung results ({fidelity.stage} at {fidelity.min_epochs} "
            f"epochs) are the same objective, {value:g}: that rung cannot rank, so {then}; "
            f"raise search.{fidelity.stage}.epochs.low")


class StoreView:
    """Builds the tuner's view of the store before each ask (keys computed once each)."""

    def __init__(self, store: ArtifactStore, cfg: PipelineConfig, study: StudySpace,
                 groups_tuned: tuple[int, ...]) -> None:
        self.store, self.cfg, self.study, self.tuned = store, cfg, study, groups_tuned
        self._keys: dict[str, tuple[dict[int, str], dict[int, str]]] = {}

    def __call__(self, trials: list[Trial]) -> CacheView:
        fid = self.study.fidelity
        has = functools.cache(self.store.has)  # one lookup per key per ask
        runs = []
        for t in trials:
            in_store = [has(t.stages[p].key) for p in self.tuned]
            if fid is not None and t.epochs not in (None, fid.max_epochs):
                in_store[fid.index] = False  # a stage-level prefix is the whole training
            loads = [t.tuner_costs[k] if t.tuner_cached[k] else None
                     for k in range(len(self.tuned))]
            runs.append((t.params, in_store, loads))
        base = CacheView.from_runs(runs)
        if fid is None:
            return base
        checkpoints: dict[str, CheckpointEntry] = {}
        for t in trials:
            pre = tuple(dict(p) for p in t.params[: fid.index + 1])
            pk = prefix_key(pre)
            if pk in checkpoints:
                continue
            bounds, wholes = self._epoch_keys(t, pk)
            epochs = {e for e, k in bounds.items() if has(k)}
            epochs |= {e for e, k in wholes.items() if e not in epochs and has(k)}
            if epochs:
                checkpoints[pk] = CheckpointEntry(pre, tuple(sorted(epochs)))
        return MFCacheView(prefixes=base.prefixes, train_stage=fid.index, checkpoints=checkpoints,
                           outputs=frozenset(self._outputs(trials, has)))

    def _outputs(self, trials: list[Trial], has: Any) -> set[str]:
        """`fidelity_key`s of the tuned stages after the fidelity stage still in the store,
        each computed on its trial's checkpoint (none when the fidelity stage is last)."""
        fid = self.study.fidelity
        assert fid is not None
        out: set[str] = set()
        for t in trials:
            for k in range(fid.index + 1, len(self.tuned)):
                if t.epochs is None or not has(t.stages[self.tuned[k]].key):
                    break
                out.add(fidelity_key(t.params[: k + 1], t.epochs))
        return out

    def _epoch_keys(self, trial: Trial, pk: str) -> tuple[dict[int, str], dict[int, str]]:
        """A trial's training stage: {epoch: boundary key} of a full-length run, and
        {epoch: whole-stage key} of a run of that many epochs (every fidelity)."""
        if pk not in self._keys:
            fid = self.study.fidelity
            assert fid is not None
            cand = MFCandidate(params=trial.params, prefix_depth=0, epochs=fid.max_epochs)
            planned = stage_keys(self.study.config(self.cfg, cand))
            bounds = boundary_keys(planned).get(fid.stage, {})
            at = STAGE_NAMES.index(fid.stage)
            wholes = {fid.max_epochs: planned[at][1]}
            for e in range(fid.min_epochs, fid.max_epochs):
                cand.epochs = e
                wholes[e] = stage_keys(self.study.config(self.cfg, cand))[at][1]
            self._keys[pk] = (bounds, wholes)
        return self._keys[pk]
