"""Adam-HD: Adam whose learning rate follows its own hypergradient.

Baydin et al., "Online Learning Rate Adaptation with Hypergradient Descent"
(ICLR 2018). The loss after the previous step depends on that step's learning
rate through ``theta_{t-1} = theta_{t-2} - alpha * u_{t-1}``, so
``d f(theta_{t-1}) / d alpha = -g_t . u_{t-1}``: one dot product per step tells
whether the last step was too short (positive) or too long (negative).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from .moments import update_adam_moments_
from .settings import DEFAULT_HYPERGRAD_LR

__all__ = ["AdamHD", "HypergradRule"]

HypergradRule = Literal["additive", "multiplicative"]

#: Default hypergradient learning rates (beta). Additive: the reference
#: implementation's Adam-HD default. Multiplicative: beta is a log-space step
#: per unit of cosine, so 0.01 changes alpha by at most ~1% per step.


class AdamHD(Optimizer):
    """Adam(W) with one hypergradient-adapted learning rate per parameter group.

    Per group and step ``t`` (before the Adam update):

    - ``u_{t-1} = m_hat_{t-1} / (sqrt(v_hat_{t-1}) + eps)`` is the last step's
      Adam direction, kept in ``state["prev_dir"]`` (one buffer per parameter,
      cheaper than recomputing it from the moments), and
      ``h_t = sum over the group's tensors of g_t . u_{t-1}``.
    - additive rule: ``alpha_t = alpha_{t-1} + beta * h_t`` (Baydin's rule).
    - multiplicative rule: ``alpha_t = alpha_{t-1} * exp(beta * h_t / (|g_t| |u_{t-1}|))``,
      norms over the group; the scaled hypergradient is the cosine between the
      gradient and the last direction, in [-1, 1], so beta is a bounded
      log-step independent of the gradient's magnitude and alpha stays positive.
    - ``alpha_t`` is clamped to ``[lr_min, lr_max]`` (``lr_max=None``: unbounded).

    No hypergradient exists at the first step, so alpha is unchanged there.
    Weight decay is decoupled (AdamW: ``theta *= 1 - lr * wd``); the
    hypergradient uses the Adam direction only, as in the spec.

    ``group["lr"]`` holds the adapted alpha. ``group["lr_scale"]`` (default 1)
    multiplies it for the step: the runner puts the base schedule's value
    there (warm-up) instead of overwriting alpha, as ``LambdaLR`` would.
    After each step ``group["last_hypergrad"]`` holds ``h_t`` (a float, 0.0 at
    the first step) for inspection and tests.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        hypergrad_lr: float | None = None,
        rule: HypergradRule = "additive",
        lr_min: float = 0.0,
        lr_max: float | None = None,
    ) -> None:
        if rule not in DEFAULT_HYPERGRAD_LR:
            raise ValueError(f"rule must be 'additive' or 'multiplicative', got {rule!r}")
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be non-negative")
        if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        if hypergrad_lr is None:
            hypergrad_lr = DEFAULT_HYPERGRAD_LR[rule]
        if lr_max is not None and lr_max < lr_min:
            raise ValueError(f"lr_max ({lr_max}) < lr_min ({lr_min})")
        defaults = dict(
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            hypergrad_lr=hypergrad_lr,
            rule=rule,
            lr_min=lr_min,
            lr_max=lr_max,
            lr_scale=1.0,
            last_hypergrad=0.0,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One hypergradient update of each group's alpha, then one AdamW step."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            self._step_group(group)
        return loss

    def _step_group(self, group: dict[str, Any]) -> None:
        beta1, beta2 = group["betas"]
        eps = group["eps"]
        params = [p for p in group["params"] if p.grad is not None]
        if not params:
            return
        for p in params:
            if p.grad.is_sparse:
                raise RuntimeError("AdamHD does not support sparse gradients")
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)

        # Hypergradient from the previous direction u_{t-1}, kept from the last step.
        prev_step = self.state[params[0]]["step"]
        grads = [p.grad for p in params]
        h = 0.0
        if prev_step > 0:
            us = [self.state[p]["prev_dir"] for p in params]
            h = float(_flat_sum(torch._foreach_mul(grads, us)))
            if group["rule"] == "additive":
                alpha = group["lr"] + group["hypergrad_lr"] * h
            else:
                g2 = float(_flat_sum(torch._foreach_mul(grads, grads)))
                u2 = float(_flat_sum(torch._foreach_mul(us, us)))
                denom = math.sqrt(g2 * u2)
                cos = h / denom if denom > 0 and math.isfinite(denom) else 0.0
                alpha = group["lr"] * math.exp(group["hypergrad_lr"] * cos)
            if math.isfinite(alpha):
                alpha = max(alpha, group["lr_min"])
                if group["lr_max"] is not None:
                    alpha = min(alpha, group["lr_max"])
                group["lr"] = alpha
        group["last_hypergrad"] = h

        # Ordinary AdamW step with the adapted alpha (foreach: one kernel per op).
        step_lr = group["lr"] * group["lr_scale"]
        wd = group["weight_decay"]
        t = prev_step + 1
        ms, vs = [], []
        for p in params:
            st = self.state[p]
            st["step"] = t
            ms.append(st["exp_avg"])
            vs.append(st["exp_avg_sq"])
        denom = update_adam_moments_(ms, vs, grads, (beta1, beta2), eps, t)
        u = torch._foreach_div(ms, denom)  # u_t = m_hat / (sqrt(v_hat) + eps)
        torch._foreach_div_(u, 1.0 - beta1**t)
        if wd != 0.0:
            torch._foreach_mul_(params, 1.0 - step_lr * wd)
        torch._foreach_add_(params, u, alpha=-step_lr)
        for p, d in zip(params, u, strict=True):
            self.state[p]["prev_dir"] = d


def _flat_sum(parts: list[Tensor]) -> Tensor:
    """Sum of all elements of all tensors, accumulated in float64."""
    return torch.cat([x.reshape(-1) for x in parts]).double().sum()
