"""Learning-rate schedule multipliers shared by the modes that use a base schedule."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

__all__ = ["ScheduleName", "schedule_fn"]

ScheduleName = Literal["constant", "linear", "cosine", "wsd"]


def schedule_fn(name: ScheduleName, total_steps: int, warmup: float,
                decay_steps: int | None = None) -> Callable[[int], float]:
    """Return ``f(step) -> multiplier`` for ``LambdaLR`` (``step`` counts from 0).

    Linear warm-up over ``round(warmup * total_steps)`` steps from ``1/(w+1)``
    up to 1 (never exactly 0, so the first step moves the weights), then the
    named decay over the remaining steps: constant 1, linear to 0, or cosine
    to 0 (half period). ``wsd`` (warmup-stable-decay) holds 1 and decays
    linearly toward 0 over its last ``decay_steps`` steps only (default: a
    fifth of the run), so every step before the decay is the same whatever
    the run's length: a longer run can continue from a shorter one's stable
    phase. Steps past ``total_steps`` keep the final value.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= warmup <= 1.0:
        raise ValueError(f"warmup must be in [0, 1], got {warmup}")
    n_warm = min(total_steps, round(warmup * total_steps))
    n_decay = max(1, total_steps - n_warm)
    n_wsd = min(total_steps, decay_steps if decay_steps is not None
                else max(1, round(0.2 * total_steps)))
    wsd_start = total_steps - n_wsd

    def fn(step: int) -> float:
        if step < n_warm:
            return (step + 1) / (n_warm + 1)
        progress = min(1.0, (step - n_warm) / n_decay)
        if name == "constant":
            return 1.0
        if name == "linear":
            return 1.0 - progress
        if name == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if name == "wsd":
            return 1.0 if step < wsd_start else 1.0 - min(step - wsd_start, n_wsd) / (n_wsd + 1)
        raise ValueError(f"unknown schedule {name!r}")

    return fn
