"""Validated optimizer settings: one pydantic model per mode, joined on ``mode``.

The settings are part of the fine-tuning stage's cache key, so they must be
complete and canonical: ``model_dump()`` always contains every field with its
default filled in, mode-dependent defaults are resolved at validation time
(so ``{}`` and the explicit default dump to the same dict), lists are sorted,
and unknown keys are rejected rather than silently ignored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from .schedules import ScheduleName

# Defaults that the settings and the optimizers share (here: no torch to import them).
DEFAULT_HYPERGRAD_LR: dict[str, float] = {"additive": 1e-8, "multiplicative": 1e-2}

__all__ = [
    "OptimizerSettingsBase",
    "AdamWSettings",
    "HypergradientSettings",
    "LookaheadSettings",
    "AdamSLSSettings",
    "PLASLSSettings",
    "OptimizerSettings",
    "OptimizerMode",
    "parse_optimizer_settings",
]

OptimizerMode = Literal["adamw", "hypergradient", "lookahead", "adam_sls", "pla_sls"]
TunableHparam = Literal["lr", "weight_decay", "beta1", "beta2", "eps", "label_smoothing"]
HPARAM_NAMES: tuple[str, ...] = get_args(TunableHparam)  # what lookahead can tune


class OptimizerSettingsBase(BaseModel):
    """Fields every mode has.

    ``lr`` is the initial (hypergradient), base (adamw, lookahead) or initial
    step size eta_0 (line search) learning rate. ``grad_clip`` clips the
    training gradient by total norm. ``schedule``/``warmup`` shape the base
    learning rate over ``total_steps`` (warm-up as a fraction of the steps;
    ``decay``: the decaying fraction of a ``wsd`` schedule).
    ``label_smoothing`` is the training loss's; lookahead starts a tuned one
    at ``max(label_smoothing, 1e-5)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    schedule: ScheduleName = "constant"
    warmup: float = Field(0.0, ge=0, le=1)
    # wsd only: the fraction of the run that decays (whole epochs in a training stage, >= 1)
    decay: float = Field(0.2, gt=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, le=1)


class _AdamFields(BaseModel):
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    eps: float = Field(1e-8, gt=0)


class AdamWSettings(OptimizerSettingsBase, _AdamFields):
    """Plain AdamW with a schedule; defaults are the SLS paper's Adam baseline
    (lr 2e-5, cosine, 10% warm-up)."""

    mode: Literal["adamw"] = "adamw"
    schedule: ScheduleName = "cosine"
    warmup: float = Field(0.1, ge=0, le=1)


class HypergradientSettings(OptimizerSettingsBase, _AdamFields):
    """Adam-HD. ``hypergrad_lr`` (beta) defaults by rule: 1e-8 additive (the
    reference Adam-HD default), 1e-2 multiplicative (log-step per unit cosine).
    ``n_groups``: 1 = one global learning rate (Baydin), None = one per layer,
    k = k layer groups (see ``param_groups_by_layer``). The schedule multiplies
    the adapted rate (constant by default: the rate adapts itself)."""

    mode: Literal["hypergradient"] = "hypergradient"
    rule: Literal["additive", "multiplicative"] = "additive"
    hypergrad_lr: float = Field(..., ge=0)
    lr_min: float = Field(0.0, ge=0)
    lr_max: float | None = Field(None, gt=0)
    n_groups: int | None = Field(1, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _default_hypergrad_lr(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("hypergrad_lr") is None:
            rule = data.get("rule", "additive")
            data = {**data, "hypergrad_lr": DEFAULT_HYPERGRAD_LR.get(rule, 1e-8)}
        return data

    @model_validator(mode="after")
    def _bounds(self) -> HypergradientSettings:
        if self.lr_max is not None and self.lr_max < self.lr_min:
            raise ValueError(f"lr_max ({self.lr_max}) must be >= lr_min ({self.lr_min})")
        return self


class LookaheadSettings(OptimizerSettingsBase, _AdamFields):
    """Greedy one-step lookahead hypergradient (Lichtarge et al.). ``tune``
    chooses the adapted hyperparameters (sorted, deduplicated); ``meta_lr`` is
    the constant meta-Adam rate; ``nan_guard`` the +/- bound nan_to_num puts on
    infinite hypergradients (NaN -> 0); ``hypergrad_clip`` an optional value clip.
    ``guide_batch_size``: guidance examples per step, cycling through the
    held-out set (None: all of it every step, the release's fixed batch); the
    default 32 makes the guidance forward/backward cost one training batch's."""

    mode: Literal["lookahead"] = "lookahead"
    tune: list[TunableHparam] = Field(default_factory=lambda: ["lr"], min_length=1)
    meta_lr: float = Field(3e-5, gt=0)
    guide_batch_size: int | None = Field(32, ge=1)
    nan_guard: float = Field(10.0, gt=0)
    hypergrad_clip: float | None = Field(None, gt=0)

    @field_validator("tune")
    @classmethod
    def _canonical_tune(cls, v: list[str]) -> list[str]:
        return sorted(set(v), key=HPARAM_NAMES.index)


class AdamSLSSettings(OptimizerSettingsBase, _AdamFields):
    """ADAMSLS (IN_STAGE.md section 3). ``lr`` is eta_0. ``c`` defaults to the
    released config's 0.1. ``fallback_step_size`` None keeps the backtracked
    eta after ``max_trials`` failures. ``n_batches_per_epoch`` None: the training
    loop's real number of batches per epoch (the reset lets eta grow by at
    most ``gamma`` per epoch, whatever the dataset size); an int fixes it (the
    released code's 500). The line search sets the step size, so
    ``schedule`` must stay "constant" and ``warmup`` 0."""

    mode: Literal["adam_sls"] = "adam_sls"
    lr: float = Field(0.1, gt=0)
    c: float = Field(0.1, ge=0)
    beta_backtrack: float = Field(0.9, gt=0, lt=1)
    gamma: float = Field(2.0, ge=1)
    n_batches_per_epoch: int | None = Field(None, ge=1)
    max_trials: int = Field(100, ge=1)
    fallback_step_size: float | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _no_schedule(self) -> AdamSLSSettings:
        if self.schedule != "constant":
            raise ValueError("schedule: line-search modes set the step size; use 'constant'")
        if self.warmup != 0.0:
            raise ValueError("warmup: line-search modes set the step size; use 0")
        return self


class PLASLSSettings(AdamSLSSettings):
    """PLASLS: ADAMSLS with one step size per layer group. ``n_groups`` is the
    total group count (10 as for BERT-base in the paper; capped by the model's
    layers; None = one per layer); ``n_global_steps`` the initial steps with one
    global search (6 in the released code)."""

    mode: Literal["pla_sls"] = "pla_sls"  # type: ignore[assignment]
    n_groups: int | None = Field(10, ge=1)
    n_global_steps: int = Field(6, ge=0)
    strategy: Literal["cycle"] = "cycle"


OptimizerSettings = Annotated[
    AdamWSettings | HypergradientSettings | LookaheadSettings | AdamSLSSettings | PLASLSSettings,
    Field(discriminator="mode"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(OptimizerSettings)


def parse_optimizer_settings(data: dict[str, Any]) -> OptimizerSettings:
    """Validate a settings dict (``mode`` required); raises ``pydantic.ValidationError``.

    The error's location names the offending field, e.g. ``adamw.foo`` for an
    unknown key ``foo`` in adamw settings.
    """
    return _ADAPTER.validate_python(data)
