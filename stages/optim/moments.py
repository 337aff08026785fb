"""The Adam moment update shared by the optimizers that do their own steps."""

from __future__ import annotations

import torch
from torch import Tensor


def update_adam_moments_(
    ms: list[Tensor],
    vs: list[Tensor],
    grads: list[Tensor],
    betas: tuple[float, float],
    eps: float,
    t: int,
) -> list[Tensor]:
    """``m <- b1 m + (1-b1) g``, ``v <- b2 v + (1-b2) g^2`` in place (foreach ops);
    returns the new ``sqrt(v_hat_t) + eps`` per tensor, the Adam denominator."""
    beta1, beta2 = betas
    torch._foreach_mul_(ms, beta1)
    torch._foreach_add_(ms, grads, alpha=1.0 - beta1)
    torch._foreach_mul_(vs, beta2)
    torch._foreach_addcmul_(vs, grads, grads, value=1.0 - beta2)
    denom = torch._foreach_div(vs, 1.0 - beta2**t)
    torch._foreach_sqrt_(denom)
    torch._foreach_add_(denom, eps)
    return denom
