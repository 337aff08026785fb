"""Greedy one-step lookahead hypergradient on held-out guidance data.

Lichtarge, Alberti, Kumar, "Simple and Effective Gradient-Based Tuning of
Sequence-to-Sequence Models" (AutoML-Conf 2022). Each training step is written
as a differentiable function of the hyperparameters lambda,
``theta' = AdamW(theta, g_train(lambda); lambda)``; the guidance loss at
``theta'`` is differentiated w.r.t. lambda through that step, lambda takes one
(meta-)Adam step, and ``theta'`` becomes the new weights. The lookahead step is
the real step, so the only extra cost is one guidance forward+backward.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.optim import Optimizer

from .errors import NonFiniteLossError
from .settings import HPARAM_NAMES

__all__ = [
    "HPARAM_NAMES",
    "Activation",
    "LookaheadHD",
    "ce_loss_parts",
    "make_guide_loss",
]

@dataclass(frozen=True)
class Activation:
    """Map an unconstrained raw value x to a hyperparameter (the release's parameterization).

    ``sigmoid``: ``(hi - lo) * sigmoid(k x) + lo``; ``exp``: ``exp(k x) + lo``,
    optionally capped at ``hi`` (a cap has zero gradient beyond it).
    """

    kind: Literal["sigmoid", "exp"]
    lo: float = 0.0
    hi: float | None = None
    k: float = 1.0

    def __call__(self, x: Tensor) -> Tensor:
        if self.kind == "sigmoid":
            assert self.hi is not None
            return (self.hi - self.lo) * torch.sigmoid(self.k * x) + self.lo
        y = torch.exp(self.k * x) + self.lo
        return y if self.hi is None else torch.clamp(y, max=self.hi)

    def inverse(self, value: float) -> float:
        """Raw x giving ``value``; a value on the boundary (weight decay 0) is moved
        1e-12 of the range inside, so x is finite."""
        if self.kind == "sigmoid":
            assert self.hi is not None
            span = self.hi - self.lo
            frac = min(max((value - self.lo) / span, 1e-12), 1.0 - 1e-12)
            return math.log(frac / (1.0 - frac)) / self.k
        return math.log(max(value - self.lo, 1e-12)) / self.k


#: lr is a multiplier exp(x) on the base schedule (starts at x1); the others
#: follow the release: sigmoid into [0, 1] (weight decay), [0, 1 - 1e-5]
#: (betas), floor 1e-10 (eps), exp (label smoothing, capped at 1).
ACTIVATIONS: dict[str, Activation] = {
    "lr": Activation("exp"),
    "weight_decay": Activation("sigmoid", 0.0, 1.0),
    "beta1": Activation("sigmoid", 0.0, 1.0 - 1e-5),
    "beta2": Activation("sigmoid", 0.0, 1.0 - 1e-5),
    "eps": Activation("sigmoid", 1e-10, 1.0),
    "label_smoothing": Activation("exp", 0.0, 1.0),
}

#: Label smoothing cannot start at 0 under the exp parameterization.
LABEL_SMOOTHING_FLOOR = 1e-5


def ce_loss_parts(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Split label-smoothed cross-entropy into its two label-smoothing-free parts.

    ``F.cross_entropy(z, y, label_smoothing=s) == (1 - s) * nll + s * uniform``
    with ``nll = CE(z, y)`` and ``uniform = mean over classes of -log p``
    (averaged over the non-ignored examples, ``ignore_index=-100``). Because
    the loss is linear in s, the training gradient is too, so d(theta')/ds
    needs no second-order autograd.
    """
    nll = F.cross_entropy(logits, labels)
    logp = F.log_softmax(logits, dim=-1)
    mask = labels != -100
    uniform = -(logp.mean(dim=-1) * mask).sum() / mask.sum()
    return nll, uniform


def make_guide_loss(
    model: nn.Module, batch: dict[str, Tensor], batch_size: int | None = None
) -> Callable[[dict[str, Tensor]], Tensor]:
    """Guidance loss ``params -> CE(model_params(batch))`` with dropout off.

    ``batch_size`` None evaluates the whole guidance set every call (the
    release's one fixed guidance batch). An int cycles through it in slices
    of that size, one slice per call, wrapping around: every held-out
    example is used, and the extra forward/backward costs what a training
    batch of the same size does instead of growing with the guidance set.

    The model is switched to ``eval()`` for the guidance forward and back to
    its previous mode afterwards. ``labels`` are taken out of the inputs (the
    loss is computed here from ``.logits``, or from the output itself for
    models that return a tensor). Parameters missing from the dict are taken
    from the module. Plain cross-entropy: the guidance objective is the
    held-out loss, label smoothing is a training-loss hyperparameter.
    """
    n = int(batch["labels"].shape[0])
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"guide batch_size must be >= 1, got {batch_size}")
    size = n if batch_size is None else min(batch_size, n)
    cursor = 0

    def next_slice() -> dict[str, Tensor]:
        nonlocal cursor
        if size == n:
            return batch
        idx = torch.arange(cursor, cursor + size, device=batch["labels"].device) % n
        cursor = (cursor + size) % n
        return {k: v[idx] for k, v in batch.items()}

    def guide_loss(params: dict[str, Tensor]) -> Tensor:
        part = next_slice()
        labels = part["labels"]
        inputs = {k: v for k, v in part.items() if k != "labels"}
        was_training = model.training
        model.eval()
        try:
            out = functional_call(model, params, args=(), kwargs=inputs, strict=False)
        finally:
            model.train(was_training)
        logits = out.logits if hasattr(out, "logits") else out
        return F.cross_entropy(logits, labels)

    return guide_loss


class LookaheadHD(Optimizer):
    """AdamW whose hyperparameters follow the one-step lookahead hypergradient.

    Construct with the model (or ``(name, parameter)`` pairs) and
    ``guide_loss(params) -> Tensor``, a function of a ``{name: tensor}`` dict
    (see :func:`make_guide_loss`). ``tune`` names the hyperparameters to adapt
    (subset of :data:`HPARAM_NAMES`); the others stay at their given values.

    ``step(closure)``: the closure runs the training forward on the current
    batch and returns either ``(nll, uniform)`` from :func:`ce_loss_parts`
    (required when label smoothing is tuned; the training loss is
    ``(1 - s) nll + s uniform``) or one loss tensor. It must not call
    backward. The step:

    1. g = grad of L_train at theta (grads by ``torch.autograd.grad``;
       ``p.grad`` is left untouched); non-finite L_train raises
       :class:`NonFiniteLossError` before any change. ``max_grad_norm`` clips
       g (the clip factor is treated as a constant).
    2. theta' = functional AdamW step with the activated hyperparameters
       (``lr = group["lr"] * exp(x_lr)``, ``group["lr"]`` being the base
       schedule's value that ``LambdaLR`` may set), differentiable in lambda.
    3. L_guide(theta'), d L_guide / d lambda by autograd through step 2.
    4. theta <- theta' (detached), moments <- their new values.
    5. hypergradients: ``nan_to_num(nan=0, posinf=+nan_guard, neginf=-nan_guard)``,
       then clipped to ``[-hypergrad_clip, hypergrad_clip]`` if given, then one
       Adam step on the raw lambda with ``meta_lr`` (constant).

    Returns the training loss at theta. Two forward passes per step.
    Weight decay (decoupled) applies to every parameter of the single group.
    """

    def __init__(
        self,
        model: nn.Module | Iterable[tuple[str, nn.Parameter]],
        guide_loss: Callable[[dict[str, Tensor]], Tensor],
        lr: float = 2e-5,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        label_smoothing: float = 0.0,
        tune: Sequence[str] = ("lr",),
        meta_lr: float = 3e-5,
        meta_betas: tuple[float, float] = (0.9, 0.999),
        meta_eps: float = 1e-8,
        nan_guard: float = 10.0,
        hypergrad_clip: float | None = None,
        max_grad_norm: float | None = None,
    ) -> None:
        named = (
            [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            if isinstance(model, nn.Module)
            else list(model)
        )
        unknown = sorted(set(tune) - set(HPARAM_NAMES))
        if unknown:
            raise ValueError(
                f"unknown hyperparameters to tune: {unknown}; choose from {HPARAM_NAMES}"
            )
        self.names = [n for n, _ in named]
        super().__init__([p for _, p in named], dict(lr=lr))
        self.guide_loss = guide_loss
        self.tune = tuple(sorted(set(tune), key=HPARAM_NAMES.index))
        self.fixed: dict[str, float] = {
            "lr": 1.0,
            "weight_decay": weight_decay,
            "beta1": betas[0],
            "beta2": betas[1],
            "eps": eps,
            "label_smoothing": label_smoothing,
        }
        first = named[0][1]
        self.hparam_raw: dict[str, Tensor] = {}
        for name in self.tune:
            init = self.fixed[name]
            if name == "label_smoothing":
                init = max(init, LABEL_SMOOTHING_FLOOR)
            raw = ACTIVATIONS[name].inverse(init)
            self.hparam_raw[name] = torch.tensor(
                raw, dtype=first.dtype, device=first.device, requires_grad=True
            )
        self.meta_optimizer = (
            torch.optim.Adam(
                list(self.hparam_raw.values()), lr=meta_lr, betas=meta_betas, eps=meta_eps
            )
            if self.hparam_raw
            else None
        )
        self.nan_guard = nan_guard
        self.hypergrad_clip = hypergrad_clip
        self.max_grad_norm = max_grad_norm
        self.n_steps = 0
        self.forward_passes = 0
        self.last_hypergrads: dict[str, float] = {}
        self.last_guide_loss: float = float("nan")

    def __getstate__(self) -> dict[str, Any]:
        # torch's Optimizer pickles only defaults/state/param_groups; keep our
        # attributes too so copy.deepcopy gives a working optimizer.
        return self.__dict__.copy()

    def hparams(self) -> dict[str, Tensor]:
        """Activated hyperparameters (tensors, differentiable in the raw values)."""
        out: dict[str, Tensor] = {}
        for name in HPARAM_NAMES:
            if name in self.hparam_raw:
                out[name] = ACTIVATIONS[name](self.hparam_raw[name])
            else:
                out[name] = torch.tensor(self.fixed[name], dtype=torch.float64)
        return out

    def hparam_values(self) -> dict[str, float]:
        """Current hyperparameter values as floats (``lr`` is the multiplier)."""
        with torch.no_grad():
            return {k: float(v) for k, v in self.hparams().items()}

    def step(self, closure: Callable[[], Any] | None = None) -> Tensor:  # type: ignore[override]
        """One lookahead step (see the class docstring); returns the training loss."""
        if closure is None:
            raise ValueError("LookaheadHD.step needs a closure returning the training loss")
        group = self.param_groups[0]
        params: list[Tensor] = group["params"]
        t = self.n_steps + 1
        hp = self.hparams()
        tune_ls = "label_smoothing" in self.hparam_raw

        with torch.enable_grad():
            out = closure()
            self.forward_passes += 1
            if isinstance(out, tuple):
                nll, uniform = out
            else:
                if tune_ls:
                    raise ValueError(
                        "tuning label_smoothing needs a closure returning (nll, uniform)"
                    )
                nll, uniform = out, None
            ls0 = float(hp["label_smoothing"].detach())
            loss = nll if uniform is None else (1.0 - ls0) * nll + ls0 * uniform
            f0 = float(loss.detach())
            if not math.isfinite(f0):
                raise NonFiniteLossError(
                    f"LookaheadHD: non-finite training loss {f0} at step {t}", step=t
                )
            if tune_ls:
                assert uniform is not None
                g_a = torch.autograd.grad(nll, params, retain_graph=True, allow_unused=True)
                g_b = torch.autograd.grad(uniform, params, allow_unused=True)
            else:
                g_a = torch.autograd.grad(loss, params, allow_unused=True)
                g_b = None

        active = [i for i, g in enumerate(g_a) if g is not None]
        clip = 1.0
        if self.max_grad_norm is not None:
            with torch.no_grad():
                g_now = [
                    g_a[i] if g_b is None else (1.0 - ls0) * g_a[i] + ls0 * g_b[i] for i in active
                ]
                norm = float(
                    torch.linalg.vector_norm(
                        torch.stack([torch.linalg.vector_norm(g) for g in g_now])
                    )
                )
                clip = min(1.0, self.max_grad_norm / (norm + 1e-6))

        new_params, new_m, new_v = self._functional_adamw(
            group, params, active, g_a, g_b, hp, t, clip
        )

        with torch.enable_grad():
            guide = self.guide_loss({self.names[i]: new_params[i] for i in active})
            self.forward_passes += 1
            raws = list(self.hparam_raw.values())
            if raws and guide.requires_grad:
                hgs = torch.autograd.grad(guide, raws, allow_unused=True)
            else:
                hgs = tuple(None for _ in raws)
        self.last_guide_loss = float(guide.detach())

        with torch.no_grad():
            for i in active:
                p = params[i]
                p.copy_(new_params[i])
                state = self.state[p]
                state["step"] = t
                state["exp_avg"] = new_m[i]
                state["exp_avg_sq"] = new_v[i]
            self.last_hypergrads = {}
            for (name, raw), hg in zip(self.hparam_raw.items(), hgs, strict=True):
                hg = torch.zeros_like(raw) if hg is None else hg.detach()
                hg = torch.nan_to_num(hg, nan=0.0, posinf=self.nan_guard, neginf=-self.nan_guard)
                if self.hypergrad_clip is not None:
                    hg = hg.clamp(-self.hypergrad_clip, self.hypergrad_clip)
                raw.grad = hg
                self.last_hypergrads[name] = float(hg)
        if self.meta_optimizer is not None:
            self.meta_optimizer.step()
            self.meta_optimizer.zero_grad(set_to_none=True)
        self.n_steps = t
        return loss.detach()

    def _functional_adamw(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        active: list[int],
        g_a: Sequence[Tensor | None],
        g_b: Sequence[Tensor | None] | None,
        hp: dict[str, Tensor],
        t: int,
        clip: float,
    ) -> tuple[dict[int, Tensor], dict[int, Tensor], dict[int, Tensor]]:
        """theta', m, v of one AdamW step; differentiable in the tuned raw hyperparameters."""
        with torch.enable_grad():
            ref = params[active[0]]
            h = {k: v.to(device=ref.device, dtype=ref.dtype) for k, v in hp.items()}
            lr = group["lr"] * h["lr"]
            wd, b1, b2, eps, ls = (
                h[k] for k in ("weight_decay", "beta1", "beta2", "eps", "label_smoothing")
            )
            bc1 = 1.0 - b1**t
            bc2 = 1.0 - b2**t
            v_needs_grad = "beta2" in self.hparam_raw or "label_smoothing" in self.hparam_raw
            new_p: dict[int, Tensor] = {}
            new_m: dict[int, Tensor] = {}
            new_v: dict[int, Tensor] = {}
            for i in active:
                p = params[i]
                state = self.state[p]
                m_prev = state.get("exp_avg")
                v_prev = state.get("exp_avg_sq")
                if m_prev is None:
                    m_prev = torch.zeros_like(p, memory_format=torch.preserve_format)
                    v_prev = torch.zeros_like(p, memory_format=torch.preserve_format)
                ga = g_a[i]
                assert ga is not None
                if g_b is not None:
                    gb = g_b[i]
                    g = ga + ls * (gb - ga) if gb is not None else (1.0 - ls) * ga
                else:
                    g = ga
                if clip != 1.0:
                    g = g * clip
                m = b1 * m_prev + (1.0 - b1) * g
                v = b2 * v_prev + (1.0 - b2) * g * g
                v_hat = v / bc2
                if v_needs_grad:
                    # sqrt has an infinite derivative at 0: route zeros around it.
                    pos = v_hat > 0
                    root = torch.where(
                        pos, torch.sqrt(torch.where(pos, v_hat, torch.ones_like(v_hat))), 0.0
                    )
                else:
                    root = v_hat.detach().sqrt()
                direction = (m / bc1) / (root + eps)
                new_p[i] = p.detach() * (1.0 - lr * wd) - lr * direction
                new_m[i] = m.detach()
                new_v[i] = v.detach()
        return new_p, new_m, new_v
