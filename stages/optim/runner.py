"""One driver for every optimizer mode, so the training loop has a single code path.

``build_optimizer(model, settings, total_steps, guide_batch)`` returns a
:class:`StepRunner`; the loop calls ``runner.step(batch)`` once per batch and
reads ``runner.trajectory`` / ``runner.forward_passes`` at the end. Each mode
differs only inside ``step``: plain backward + step (adamw, hypergradient),
closures with repeatable dropout (line search), or a lookahead with a
guidance forward (lookahead).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.optim.lr_scheduler import LambdaLR

from .adam_hd import AdamHD
from .errors import NonFiniteLossError
from .groups import param_groups_by_layer
from .lookahead import LookaheadHD, ce_loss_parts, make_guide_loss
from .schedules import schedule_fn
from .settings import (
    AdamSLSSettings,
    AdamWSettings,
    HypergradientSettings,
    LookaheadSettings,
    OptimizerSettings,
    OptimizerSettingsBase,
    PLASLSSettings,
)
from .sls import PLASLS, AdamSLS, deterministic_closure
from .trajectory import Trajectory

__all__ = ["StepRunner", "build_optimizer", "model_logits"]


def model_logits(model: nn.Module, batch: dict[str, Tensor]) -> Tensor:
    """Forward without ``labels`` (the loss is ours, so label smoothing applies).

    Hugging Face models return an output with ``.logits`` (``(B, C)`` for
    sequence classification and multiple choice alike); plain modules may
    return the tensor itself.
    """
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    out = model(**inputs)
    return out.logits if hasattr(out, "logits") else out


class StepRunner:
    """Runs one optimizer step per ``step(batch)`` call, whatever the mode.

    Attributes: ``optimizer`` (the torch optimizer), ``scheduler`` (a
    ``LambdaLR`` for adamw/lookahead, else None), ``trajectory``,
    ``forward_passes`` (all forward passes so far: line-search trials and
    lookahead's guidance forward included), ``n_steps``.
    """

    def __init__(
        self,
        model: nn.Module,
        settings: OptimizerSettingsBase,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        group_names: list[str],
        scheduler: LambdaLR | None = None,
        lr_factor: Callable[[int], float] | None = None,
    ) -> None:
        self.model = model
        self.settings = settings
        self.mode: str = settings.mode  # type: ignore[attr-defined]
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.total_steps = total_steps
        self.trajectory = Trajectory(self.mode, group_names)
        self.forward_passes = 0
        self.n_steps = 0
        self._lr_factor = lr_factor
        self._params = [p for g in optimizer.param_groups for p in g["params"]]
        self._step_impl: Callable[[dict[str, Tensor], int], float] = {
            "adamw": self._step_backprop,
            "hypergradient": self._step_backprop,
            "lookahead": self._step_lookahead,
            "adam_sls": self._step_sls,
            "pla_sls": self._step_sls,
        }[self.mode]

    def step(self, batch: dict[str, Tensor]) -> float:
        """One training step on ``batch`` (must contain ``labels``); returns the loss.

        Raises :class:`NonFiniteLossError` naming the step and mode when the
        training loss is NaN/inf; it is raised before the optimizer changes
        the weights.
        """
        if "labels" not in batch:
            raise KeyError("batch has no 'labels'")
        if not self.model.training:
            self.model.train()
        t = self.n_steps + 1
        try:
            loss = self._step_impl(batch, t)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"non-finite training loss at step {t} (mode {self.mode!r}): {err}",
                step=t,
                mode=self.mode,
            ) from err
        self.n_steps = t
        return loss

    # -- modes -------------------------------------------------------------

    def _step_backprop(self, batch: dict[str, Tensor], t: int) -> float:
        """adamw / hypergradient: zero_grad, forward, CE, backward, clip, step, schedule."""
        opt = self.optimizer
        opt.zero_grad(set_to_none=True)
        logits = model_logits(self.model, batch)
        loss = F.cross_entropy(
            logits, batch["labels"], label_smoothing=self.settings.label_smoothing
        )
        loss.backward()
        self.forward_passes += 1
        value = loss.item()  # the one host sync of the step
        if not math.isfinite(value):
            raise NonFiniteLossError(f"loss is {value}")
        if self.settings.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self._params, self.settings.grad_clip)
        if self._lr_factor is not None:  # hypergradient: schedule multiplies alpha
            factor = self._lr_factor(t - 1)
            for g in opt.param_groups:
                g["lr_scale"] = factor
        opt.step()
        if self.scheduler is not None:
            lrs = self.scheduler.get_last_lr()
            self.scheduler.step()
            self.trajectory.record(t, value, lrs)
        else:
            groups = opt.param_groups
            self.trajectory.record(
                t,
                value,
                [g["lr"] * g["lr_scale"] for g in groups],
                hypergrad={g["name"]: g["last_hypergrad"] for g in groups},
            )
        return value

    def _step_sls(self, batch: dict[str, Tensor], t: int) -> float:
        opt = self.optimizer
        assert isinstance(opt, AdamSLS)
        labels = batch["labels"]
        ls = self.settings.label_smoothing

        def loss_fn() -> Tensor:
            return F.cross_entropy(model_logits(self.model, batch), labels, label_smoothing=ls)

        before = opt.forward_passes
        loss = opt.step(deterministic_closure(loss_fn))
        self.forward_passes += opt.forward_passes - before
        rec = opt.last_search
        assert rec is not None
        groups = opt.param_groups
        if len(rec.groups) == len(groups) and len(groups) > 1:
            searched = "global"
        else:
            searched = groups[rec.groups[0]]["name"]
        value = float(loss)
        self.trajectory.record(
            t,
            value,
            [g["lr"] for g in groups],
            step_size=sum(rec.step_sizes) / len(rec.step_sizes),
            trials=rec.trials,
            searched_group=searched if isinstance(opt, PLASLS) else None,
        )
        return value

    def _step_lookahead(self, batch: dict[str, Tensor], t: int) -> float:
        opt = self.optimizer
        assert isinstance(opt, LookaheadHD)
        labels = batch["labels"]

        def parts() -> tuple[Tensor, Tensor]:
            return ce_loss_parts(model_logits(self.model, batch), labels)

        hp_before = opt.hparam_values()
        base_lr = opt.param_groups[0]["lr"]
        before = opt.forward_passes
        loss = opt.step(parts)
        self.forward_passes += opt.forward_passes - before
        assert self.scheduler is not None
        self.scheduler.step()
        value = float(loss)
        tuned = {("lr_multiplier" if k == "lr" else k): hp_before[k] for k in opt.tune}
        self.trajectory.record(
            t,
            value,
            [base_lr * hp_before["lr"]],
            hparams=tuned,
            hypergrad=dict(opt.last_hypergrads),
            guide_loss=opt.last_guide_loss,
        )
        return value


def _trainable(model: nn.Module) -> list[nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def build_optimizer(
    model: nn.Module,
    settings: OptimizerSettings,
    total_steps: int,
    guide_batch: dict[str, Tensor] | None = None,
    steps_per_epoch: int | None = None,
    decay_steps: int | None = None,
) -> StepRunner:
    """Make the optimizer, schedule and runner for ``settings.mode``.

    ``total_steps`` sizes the schedule (``decay_steps``: the decaying steps of
    a ``wsd`` one; default its ``decay`` fraction of the steps); ``steps_per_epoch`` is the line
    searches' ``n_batches_per_epoch`` when their settings leave it None (500
    if unknown). ``guide_batch`` (a fixed held-out
    batch with ``labels``) is required for lookahead and ignored otherwise.
    Parameter groups: one group ``"all"`` for adamw, adam_sls and lookahead;
    ``param_groups_by_layer(model, n_groups)`` for hypergradient and pla_sls.
    """
    s: Any = settings
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if decay_steps is None:  # a wsd schedule's decay: its fraction of the run
        decay_steps = max(1, round(s.decay * total_steps))
    sched = schedule_fn(s.schedule, total_steps, s.warmup, decay_steps)
    if isinstance(s, AdamWSettings):
        groups = [{"name": "all", "params": _trainable(model)}]
        opt = torch.optim.AdamW(
            groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps, weight_decay=s.weight_decay
        )
        return StepRunner(model, s, opt, total_steps, ["all"], scheduler=LambdaLR(opt, sched))
    if isinstance(s, HypergradientSettings):
        groups = param_groups_by_layer(model, s.n_groups)
        opt = AdamHD(
            groups,
            lr=s.lr,
            betas=(s.beta1, s.beta2),
            eps=s.eps,
            weight_decay=s.weight_decay,
            hypergrad_lr=s.hypergrad_lr,
            rule=s.rule,
            lr_min=s.lr_min,
            lr_max=s.lr_max,
        )
        names = [g["name"] for g in groups]
        return StepRunner(model, s, opt, total_steps, names, lr_factor=sched)
    if isinstance(s, LookaheadSettings):
        if guide_batch is None:
            raise ValueError("lookahead mode needs a guide_batch (held-out batch with labels)")
        opt = LookaheadHD(
            model,
            make_guide_loss(model, guide_batch, s.guide_batch_size),
            lr=s.lr,
            betas=(s.beta1, s.beta2),
            eps=s.eps,
            weight_decay=s.weight_decay,
            label_smoothing=s.label_smoothing,
            tune=s.tune,
            meta_lr=s.meta_lr,
            nan_guard=s.nan_guard,
            hypergrad_clip=s.hypergrad_clip,
            max_grad_norm=s.grad_clip,
        )
        return StepRunner(model, s, opt, total_steps, ["all"], scheduler=LambdaLR(opt, sched))
    if isinstance(s, AdamSLSSettings):
        common: dict[str, Any] = dict(
            lr=s.lr,
            betas=(s.beta1, s.beta2),
            eps=s.eps,
            c=s.c,
            beta_backtrack=s.beta_backtrack,
            gamma=s.gamma,
            n_batches_per_epoch=s.n_batches_per_epoch or steps_per_epoch or 500,
            max_trials=s.max_trials,
            fallback_step_size=s.fallback_step_size,
            weight_decay=s.weight_decay,
            max_grad_norm=s.grad_clip,
        )
        if isinstance(s, PLASLSSettings):
            groups = param_groups_by_layer(model, s.n_groups)
            opt = PLASLS(groups, n_global_steps=s.n_global_steps, strategy=s.strategy, **common)
        else:
            groups = [{"name": "all", "params": _trainable(model)}]
            opt = AdamSLS(groups, **common)
        names = [g["name"] for g in groups]
        return StepRunner(model, s, opt, total_steps, names)
    raise TypeError(f"unsupported settings type {type(settings).__name__}")
