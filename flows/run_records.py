"""Read models of what runs and studies record in the store: one place for them.

The pipeline flow writes ``runs/<flow_run_id>.json`` after every successful
run; the tune flow writes ``studies/<name>/study.json`` after every trial.
These pydantic models parse those JSON documents (tolerant of optional
fields that older documents lack, ignoring fields they don't know) and carry
the few numbers every view needs: seconds saved by reuse, stages reused, hit
rate, best objective. The reuse dashboard, the tune flow's Prefect artifacts
and the CLI tables all read them from here, so the later typed-record
refactor has one module to adopt.

Nothing here does I/O or imports Prefect, torch or FastAPI.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "PIPELINE_STAGES", "RunRecord", "RunSummary", "StageRun", "StageStatus", "StudyRecord",
    "StudyResult", "Trial", "round_sig",
]

# The pipeline's stage order (stages.pipeline.STAGE_NAMES, without importing torch):
# used only to name the params of study documents that predate `stage_names`.
PIPELINE_STAGES = ("data_prep", "intermediate_finetune", "target_finetune", "evaluate")


def round_sig(value: Any, digits: int = 4) -> Any:
    """Floats to `digits` significant digits (readable tables); anything else as is."""
    if isinstance(value, float) and math.isfinite(value) and value != 0:
        return float(f"{value:.{digits}g}")
    return value


def _num(v: Any) -> float:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else 0.0


class _Doc(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


StageStatus = Literal["computed", "cached"]


class StageRun(_Doc):
    """One stage of one run: computed, or reused from the cache ("cached")."""

    name: str
    key: str
    status: StageStatus = "computed"
    compute_s: float = 0.0
    load_s: float = 0.0
    saved_s: float = 0.0  # recorded compute seconds of a reused entry less its load time

    @field_validator("compute_s", "load_s", "saved_s", mode="before")
    @classmethod
    def _seconds(cls, v: Any) -> float:
        return _num(v)

    @property
    def cached(self) -> bool:
        return self.status == "cached"

    @property
    def spent_s(self) -> float:
        return self.compute_s + self.load_s


class _Stages(_Doc):
    stages: list[StageRun] = Field(default_factory=list)

    @property
    def saved_s(self) -> float:
        return sum(s.saved_s for s in self.stages)

    @property
    def spent_s(self) -> float:
        return sum(s.spent_s for s in self.stages)

    @property
    def n_reused(self) -> int:
        return sum(s.cached for s in self.stages)


class RunSummary(_Stages):
    """What a pipeline run returns (and a work-pool run writes for its tune flow)."""

    objective: float
    metrics: dict[str, float]
    flow_run_id: str | None = None
    # what the in-stage modes adapted, per training stage (final/mean lr, ...)
    adapted: dict[str, dict[str, Any]] = Field(default_factory=dict)


class RunRecord(_Stages):
    """runs/<id>.json: one successful pipeline run and the entries it computed or reused."""

    run: str
    flow_run_name: str | None = None
    config: str | None = None  # the config's name
    started: float | None = None
    ended: float | None = None
    objective: float | None = None

    @property
    def flow_run_id(self) -> str | None:
        """The Prefect flow run id (runs without one are recorded under a random hex id)."""
        return self.run if len(self.run) == 36 and self.run.count("-") == 4 else None


class Trial(_Stages):
    """One trial of a study: the candidate, its pipeline run's stage rows, the budget after it."""

    id: int
    params: list[dict[str, Any]] = Field(default_factory=list)
    active_params: list[dict[str, Any]] | None = None
    prefix_depth: int | None = None
    objective: float | None = None
    metrics: dict[str, Any] = Field(default_factory=dict)
    adapted: dict[str, Any] = Field(default_factory=dict)
    tuner_costs: list[float] = Field(default_factory=list)
    tuner_cached: list[bool] = Field(default_factory=list)
    spent: float = 0.0  # the study's budget spent after this trial
    flow_run: str | None = None
    flow_run_id: str | None = None
    # multi-fidelity studies: each rung of a configuration is a trial of its own
    config_id: int | None = None  # the configuration (the tuner's trial number)
    rung: int | None = None
    epochs: int | None = None  # the fidelity stage trained to this many epochs

    @property
    def shown_params(self) -> list[dict[str, Any]]:
        """Params as the pipeline got them (inactive conditional params left out)."""
        return self.active_params if self.active_params is not None else self.params

    @property
    def cost_s(self) -> float:
        """Stage seconds this trial cost the study (compute + cache loads)."""
        return sum(self.tuner_costs) if self.tuner_costs else self.spent_s

    def flat_params(self, stage_names: Iterable[str]) -> dict[str, Any]:
        """{"<stage>.<param>": value} over the tuned stages."""
        out: dict[str, Any] = {}
        for name, params in zip(stage_names, self.shown_params, strict=False):
            out.update({f"{name}.{k}": v for k, v in params.items()})
        return out


class StudyRecord(_Doc):
    """studies/<name>/study.json: the tuner, the budget and every trial so far.

    The tune flow updates it in place after every trial (so not frozen) and
    writes it whole: `tuner_state` is the tuner's own state, to resume from.
    """

    model_config = ConfigDict(extra="ignore", frozen=False)

    study: str
    tuner: str = "?"
    fidelity: str | None = None  # multi-fidelity tuners: the stage whose epochs are rungs
    budget: float = 0.0
    warmup: int | None = None
    seed: int | None = None
    config: dict[str, Any] | None = None
    trials: list[Trial] = Field(default_factory=list)
    stage_names: list[str] | None = None  # the tuned stages, in order
    status: str | None = None  # running | finished | failed (absent: written before this field)
    ended_reason: str | None = None
    updated: float | None = None
    tuner_state: dict[str, Any] | None = None

    @property
    def tuned_stages(self) -> list[str]:
        if self.stage_names:
            return list(self.stage_names)
        search = (self.config or {}).get("search") or {}
        return [s for s in PIPELINE_STAGES if s in search]

    @property
    def best(self) -> Trial | None:
        done = [t for t in self.trials if t.objective is not None]
        return max(done, key=lambda t: t.objective) if done else None

    @property
    def spent(self) -> float:
        return max((t.spent for t in self.trials), default=0.0)

    @property
    def saved_s(self) -> float:
        return sum(t.saved_s for t in self.trials)

    @property
    def stage_rows(self) -> int:
        return sum(len(t.stages) for t in self.trials)

    @property
    def hit_rate(self) -> float | None:
        """Reused stage runs over all stage runs of the study's trials."""
        n = self.stage_rows
        return sum(t.n_reused for t in self.trials) / n if n else None

    def param_columns(self) -> list[str]:
        """The union of every trial's params, in order of first appearance."""
        cols: dict[str, None] = {}
        for t in self.trials:
            cols.update(dict.fromkeys(t.flat_params(self.tuned_stages)))
        return list(cols)

    def best_so_far(self) -> list[float | None]:
        """After each trial (in order), the best objective so far."""
        out: list[float | None] = []
        best: float | None = None
        for t in self.trials:
            if t.objective is not None and (best is None or t.objective > best):
                best = t.objective
            out.append(best)
        return out


class StudyResult(_Doc):
    """What a tune flow returns: the study's trials and where it stands."""

    study: str
    tuner: str
    budget: float
    spent: float
    trials: list[Trial]
    best: Trial | None = None
    stage_names: list[str]
