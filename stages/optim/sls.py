"""ADAMSLS and PLASLS: Adam with an Armijo line search on the step size.

Kenneweg, Galli, Kenneweg, Hammer, "Faster Convergence for Transformer
Fine-tuning with Line Search Methods" (IJCNN 2023). The step size is not a
hyperparameter: each step it grows slightly (``eta * gamma^(1/n_b)``) and is
then cut back (``eta *= beta_backtrack``) until the momentum-free
preconditioned step gives a sufficient (Armijo) decrease of the loss on the
*same batch*. The real update then uses Adam's momentum with the accepted eta.
Each backtracking trial costs one extra forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from .errors import NonFiniteLossError
from .moments import update_adam_moments_

__all__ = ["AdamSLS", "PLASLS", "SearchRecord", "deterministic_closure"]


def deterministic_closure(
    fn: Callable[[], Tensor], seed: int | None = None
) -> Callable[[], Tensor]:
    """Wrap ``fn`` so every call draws the same random numbers (same dropout masks).

    A line search compares losses at different weights; with fresh dropout
    masks per evaluation the comparison would be noise. Each call re-seeds the
    CPU (and initialized CUDA) generators with ``seed`` and restores their
    states afterwards, so the caller's RNG stream is untouched by the evaluations. With ``seed=None`` one seed is
    drawn from the global generator at creation time, so consecutive steps
    still get different masks and a seeded run stays reproducible.
    """
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())

    devices = (
        list(range(torch.cuda.device_count()))
        if torch.cuda.is_available() and torch.cuda.is_initialized()
        else []
    )

    def closure() -> Tensor:
        # What torch.random.fork_rng does, minus torch.manual_seed's lazy CUDA
        # seeding, which formats a stack trace per call when CUDA is unused
        # (a few ms per line-search trial on a small model).
        cpu_state = torch.get_rng_state()
        cuda_states = [torch.cuda.get_rng_state(d) for d in devices]
        torch.default_generator.manual_seed(seed)
        for d in devices:
            torch.cuda.default_generators[d].manual_seed(seed)
        try:
            return fn()
        finally:
            torch.set_rng_state(cpu_state)
            for d, state in zip(devices, cuda_states, strict=True):
                torch.cuda.set_rng_state(state, d)

    return closure


@dataclass
class SearchRecord:
    """What one line search did, kept for the trajectory and for checking Armijo.

    ``loss`` is f(w); ``trial_loss`` f(w~) at the last trial; ``step_sizes``
    the accepted eta per searched group; ``initial_step_sizes`` eta after the
    reset, before backtracking; ``sufficient_decrease`` the Armijo right-hand
    side ``c * sum_g eta_g * sum(g^2 / (sqrt(v_hat)+eps))`` at the accepted etas.
    A search skipped because that decrease is below the loss's float resolution
    (see :class:`AdamSLS`) has ``trials == 0``, ``accepted == False`` and
    ``extra["skipped"] == "below_float_resolution"``.
    """

    step: int
    groups: list[int]
    loss: float
    trial_loss: float
    step_sizes: list[float]
    initial_step_sizes: list[float]
    pp_norms: list[float]
    sufficient_decrease: float
    trials: int
    accepted: bool
    extra: dict[str, Any] = field(default_factory=dict)


def _float_eps(dtype: torch.dtype) -> float:
    """Machine epsilon of a floating dtype (float32's for anything else)."""
    return torch.finfo(dtype if dtype.is_floating_point else torch.float32).eps


class AdamSLS(Optimizer):
    """ADAMSLS: Adam moments, Armijo backtracking on the step size, one shared search.

    One step (IN_STAGE.md section 3), ``t`` counting from 1:

    1. ``f(w) = closure()``, ``g`` by backward (grads are zeroed first).
    2. ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``; bias-corrected ``m_hat, v_hat``.
    3. reset ``eta <- eta * gamma^(1/n_b)``.
    4. trial ``w~ = w - eta * g / (sqrt(v_hat) + eps)``; accept when
       ``f(w) - f(w~) >= c * eta * sum(g^2 / (sqrt(v_hat) + eps))``, else
       ``eta <- beta_backtrack * eta``; at most ``max_trials`` trials. When all
       fail, eta is ``fallback_step_size`` if given, else the last backtracked
       value ``eta * beta_backtrack^max_trials`` (what the released code keeps).
    5. ``w <- w - eta * m_hat / (sqrt(v_hat) + eps)`` (decoupled weight decay
       ``w *= 1 - eta * wd`` first, if ``weight_decay > 0``).

    ``closure`` must return the loss on the same batch each call and must not
    call ``backward`` (the optimizer does); wrap it with
    :func:`deterministic_closure` so dropout masks repeat. Trials run under
    ``torch.no_grad``. A non-finite f(w) raises :class:`NonFiniteLossError`
    before any weight changes; a non-finite trial loss just fails Armijo.

    Several parameter groups share one search: each group keeps its own eta
    (``group["lr"]``) and a common factor ``s`` is backtracked, trial steps
    being ``eta_g * s``; with equal etas this is exactly the spec's search.
    ``max_grad_norm`` clips the gradient (by total norm) before the moments.
    After each step :attr:`last_search` holds a :class:`SearchRecord`.

    Safeguard (ours, not in the paper or the released code): when the required
    decrease at the initial trial, ``c * sum_g eta_g * pp_norm_g``, is at most
    ``4 * finfo(loss.dtype).eps * max(|f(w)|, 1)``, the loss cannot resolve it
    (a float32 loss near 0.69 has a spacing of ~6e-8), so every trial would
    return f(w) exactly, all ``max_trials`` would fail and eta would collapse by
    ``beta_backtrack^max_trials``, stalling the group for the rest of the run at
    a cost of ``max_trials`` forward passes. Such a search is skipped: no trial
    is run, eta keeps its reset value and the real update uses it.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        c: float = 0.1,
        beta_backtrack: float = 0.9,
        gamma: float = 2.0,
        n_batches_per_epoch: int = 500,
        max_trials: int = 100,
        fallback_step_size: float | None = None,
        weight_decay: float = 0.0,
        max_grad_norm: float | None = None,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"initial step size must be > 0, got {lr}")
        if not 0.0 < beta_backtrack < 1.0:
            raise ValueError(f"beta_backtrack must be in (0, 1), got {beta_backtrack}")
        if c < 0 or gamma < 1 or n_batches_per_epoch < 1 or max_trials < 1:
            raise ValueError("need c >= 0, gamma >= 1, n_batches_per_epoch >= 1, max_trials >= 1")
        defaults = dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        super().__init__(params, defaults)
        self.c = c
        self.beta_backtrack = beta_backtrack
        self.gamma = gamma
        self.n_batches_per_epoch = n_batches_per_epoch
        self.max_trials = max_trials
        self.fallback_step_size = fallback_step_size
        self.max_grad_norm = max_grad_norm
        self.n_steps = 0
        self.forward_passes = 0
        self.last_search: SearchRecord | None = None

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups; keep our
        # attributes too so copy.deepcopy gives a working optimizer.
        return self.__dict__.copy()

    def _groups_to_search(self, t: int) -> list[int]:
        """Indices of the groups whose step size this step's search sets."""
        return list(range(len(self.param_groups)))

    def _params(self, group: dict[str, Any]) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor:  # type: ignore[override]
        """One ADAMSLS step; returns f(w) (the loss before the step)."""
        if closure is None:
            raise ValueError(
                f"{type(self).__name__}.step needs a closure that re-evaluates the loss"
            )
        t = self.n_steps + 1
        self.zero_grad(set_to_none=True)
        with torch.enable_grad():
            loss = closure()
            self.forward_passes += 1
            loss.backward()
        f0 = float(loss.detach())
        if not math.isfinite(f0):
            raise NonFiniteLossError(
                f"{type(self).__name__}: non-finite loss {f0} at step {t}", step=t
            )
        if self.max_grad_norm is not None:
            all_params = [p for g in self.param_groups for p in self._params(g)]
            torch.nn.utils.clip_grad_norm_(all_params, self.max_grad_norm)

        with torch.no_grad():
            self._update_moments(t)
            for group in self.param_groups:
                group["lr"] = group["lr"] * self.gamma ** (1.0 / self.n_batches_per_epoch)
            searched = self._groups_to_search(t)
            self.last_search = self._line_search(t, searched, f0, closure, loss_dtype=loss.dtype)
            self._real_update(t)
        self.n_steps = t
        return loss.detach()

    def _update_moments(self, t: int) -> None:
        """Adam moments, then each group's ``sqrt(v_hat) + eps`` (``self._denoms``),
        shared by the line search's directions and the real update."""
        self._denoms: list[list[Tensor]] = []
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            ps = self._params(group)
            ms, vs = [], []
            for p in ps:
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] = t
                ms.append(state["exp_avg"])
                vs.append(state["exp_avg_sq"])
            if not ps:
                self._denoms.append([])
                continue
            grads = [p.grad for p in ps]
            self._denoms.append(
                update_adam_moments_(ms, vs, grads, (beta1, beta2), group["eps"], t)
            )

    def _line_search(
        self,
        t: int,
        searched: list[int],
        f0: float,
        closure: Callable[[], Tensor],
        loss_dtype: torch.dtype = torch.float32,
    ) -> SearchRecord:
        groups = [self.param_groups[i] for i in searched]
        params = [self._params(g) for g in groups]
        # momentum-free preconditioned gradients g / (sqrt(v_hat) + eps)
        directions = [
            torch._foreach_div([p.grad for p in ps], self._denoms[i]) if ps else []
            for i, ps in zip(searched, params, strict=True)
        ]
        # pp_norm_g = sum(g^2 / (sqrt(v_hat) + eps)) = g . direction
        norms_t = [
            torch.stack([torch.sum(p.grad * d) for p, d in zip(ps, ds, strict=True)]).sum()
            if ps
            else torch.zeros(())
            for ps, ds in zip(params, directions, strict=True)
        ]
        pp_norms = [float(x) for x in torch.stack([n.double().cpu() for n in norms_t]).tolist()]
        etas = [g["lr"] for g in groups]
        initial = list(etas)
        weighted = sum(e * n for e, n in zip(etas, pp_norms, strict=True))
        record = SearchRecord(
            step=t,
            groups=searched,
            loss=f0,
            trial_loss=f0,
            step_sizes=etas,
            initial_step_sizes=initial,
            pp_norms=pp_norms,
            sufficient_decrease=0.0,
            trials=0,
            accepted=False,
        )
        if not (math.isfinite(weighted) and weighted > 1e-12):
            # Zero (or broken) preconditioned gradient: nothing to search along.
            record.accepted = True
            return record
        # Our safeguard (not in the paper): an Armijo decrease the loss's float
        # format cannot resolve can never be observed, so don't search for it.
        required = self.c * weighted
        resolution = 4.0 * _float_eps(loss_dtype) * max(abs(f0), 1.0)
        if self.c > 0 and required <= resolution:
            record.sufficient_decrease = required
            record.extra.update(
                skipped="below_float_resolution",
                required_decrease=required,
                resolution=resolution,
            )
            return record

        saved = [torch._foreach_mul(ps, 1.0) if ps else [] for ps in params]  # copies
        scale = 1.0
        trial_loss = f0
        accepted = False
        trials = 0
        for _ in range(self.max_trials):
            for eta, ps, ws, ds in zip(etas, params, saved, directions, strict=True):
                if ps:
                    torch._foreach_copy_(ps, ws)
                    torch._foreach_add_(ps, ds, alpha=-eta * scale)
            trial_loss = float(closure().detach())
            self.forward_passes += 1
            trials += 1
            if f0 - trial_loss >= self.c * scale * weighted:  # NaN fails this test
                accepted = True
                break
            scale *= self.beta_backtrack
        for ps, ws in zip(params, saved, strict=True):
            if ps:
                torch._foreach_copy_(ps, ws)
        new_etas = [e * scale for e in etas]
        if not accepted and self.fallback_step_size is not None:
            new_etas = [self.fallback_step_size for _ in etas]
        for g, e in zip(groups, new_etas, strict=True):
            g["lr"] = e
        record.trial_loss = trial_loss
        record.step_sizes = new_etas
        record.sufficient_decrease = self.c * sum(
            e * n for e, n in zip(new_etas, pp_norms, strict=True)
        )
        record.trials = trials
        record.accepted = accepted
        return record

    def _real_update(self, t: int) -> None:
        for group, denom in zip(self.param_groups, self._denoms, strict=True):
            ps = self._params(group)
            if not ps:
                continue
            beta1 = group["betas"][0]
            eta, wd = group["lr"], group["weight_decay"]
            if wd != 0.0:
                torch._foreach_mul_(ps, 1.0 - eta * wd)
            ms = [self.state[p]["exp_avg"] for p in ps]
            torch._foreach_addcdiv_(ps, ms, denom, value=-eta / (1.0 - beta1**t))


class PLASLS(AdamSLS):
    """Per-layer ADAMSLS: each parameter group keeps its own step size.

    Strategy "cycle": for the first ``n_global_steps`` steps one global search
    over all groups sets a common step size (all groups start at ``lr``);
    afterwards each step only group ``(t - n_global_steps - 1) mod n_groups``
    (round-robin, starting at the first group) runs the line search, on its
    own parameters and its own Armijo norm, while every group gets the step
    size reset each step and takes the real update with its stored eta. The
    released code does the reset for all groups and 6 global steps.

    Build the groups with :func:`stages.optim.groups.param_groups_by_layer`;
    extra keys such as ``"name"`` are kept on the groups.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        n_global_steps: int = 6,
        strategy: str = "cycle",
        **kwargs: Any,
    ) -> None:
        if strategy != "cycle":
            raise ValueError(f"only strategy 'cycle' is implemented, got {strategy!r}")
        if n_global_steps < 0:
            raise ValueError(f"n_global_steps must be >= 0, got {n_global_steps}")
        super().__init__(params, lr=lr, **kwargs)
        self.n_global_steps = n_global_steps
        self.strategy = strategy

    def _groups_to_search(self, t: int) -> list[int]:
        n = len(self.param_groups)
        if t <= self.n_global_steps or n == 1:
            return list(range(n))
        return [(t - self.n_global_steps - 1) % n]
