"""LookaheadHD: autograd hypergradient vs finite differences, NaN guard."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from stages.optim import LookaheadHD, ce_loss_parts, make_guide_loss
from stages.optim.lookahead import HPARAM_NAMES

ALL = list(HPARAM_NAMES)


def _setup(tune: list[str]) -> tuple[nn.Module, LookaheadHD, dict, dict]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    train = {"input": torch.randn(16, 4, dtype=torch.float64), "labels": torch.randint(0, 3, (16,))}
    guide = {"input": torch.randn(12, 4, dtype=torch.float64), "labels": torch.randint(0, 3, (12,))}
    opt = LookaheadHD(
        model,
        make_guide_loss(model, guide),
        lr=0.05,
        weight_decay=0.01,
        label_smoothing=0.05,
        tune=tune,
        meta_lr=1e-2,
    )
    return model, opt, train, guide


def _closure(model: nn.Module, batch: dict):
    return lambda: ce_loss_parts(model(batch["input"]), batch["labels"])


def test_ce_loss_parts_match_label_smoothing() -> None:
    torch.manual_seed(1)
    z, y = torch.randn(9, 5), torch.randint(0, 5, (9,))
    nll, uniform = ce_loss_parts(z, y)
    for s in (0.0, 0.1, 0.7):
        want = F.cross_entropy(z, y, label_smoothing=s)
        assert torch.allclose((1 - s) * nll + s * uniform, want, atol=1e-6)


def test_hypergradient_matches_finite_differences() -> None:
    model, opt, train, guide = _setup(ALL)
    for _ in range(2):  # non-trivial moments and hyperparameters first
        opt.step(_closure(model, train))
    snapshot = copy.deepcopy((model, opt))

    opt.step(_closure(model, train))
    autograd = dict(opt.last_hypergrads)
    guide_loss = make_guide_loss(model, guide)

    delta = 1e-4  # central differences in float64: truncation ~1e-8, round-off ~1e-12
    for name in ALL:
        values = []
        for sign in (1.0, -1.0):
            m2, o2 = copy.deepcopy(snapshot)
            with torch.no_grad():
                o2.hparam_raw[name] += sign * delta
            o2.step(_closure(m2, train))
            with torch.no_grad():
                values.append(float(guide_loss(dict(m2.named_parameters()))))
        fd = (values[0] - values[1]) / (2 * delta)
        assert math.isclose(autograd[name], fd, rel_tol=2e-4), (
            name,
            autograd[name],
            fd,
        )
    assert any(abs(v) > 1e-6 for v in autograd.values())


def test_step_is_the_lookahead_step() -> None:
    """theta after step() equals theta' used for the guidance loss: no extra train pass."""
    model, opt, train, guide = _setup(["lr"])
    seen = {}
    inner = opt.guide_loss

    def spy(params: dict) -> torch.Tensor:
        seen.update({k: v.detach().clone() for k, v in params.items()})
        return inner(params)

    opt.guide_loss = spy
    opt.step(_closure(model, train))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), seen[name])
    assert opt.forward_passes == 2


def test_guide_forward_has_dropout_off_and_restores_train_mode() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 2))
    guide = {"input": torch.randn(8, 4), "labels": torch.randint(0, 2, (8,))}
    loss_fn = make_guide_loss(model, guide)
    params = dict(model.named_parameters())
    model.train()
    a, b = loss_fn(params), loss_fn(params)
    assert torch.equal(a, b)  # deterministic: no dropout
    assert model.training


def test_nan_hypergradient_does_not_poison_lambda() -> None:
    model, opt, train, guide = _setup(ALL)
    inner = opt.guide_loss
    opt.guide_loss = lambda params: inner(params) * float("nan")
    before = {k: v.detach().clone() for k, v in opt.hparam_raw.items()}
    for _ in range(3):
        opt.step(_closure(model, train))
    assert all(v == 0.0 for v in opt.last_hypergrads.values())
    for k, v in opt.hparam_raw.items():
        assert torch.isfinite(v) and torch.equal(v.detach(), before[k])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_infinite_hypergradient_is_bounded() -> None:
    model, opt, train, guide = _setup(["lr"])
    inner = opt.guide_loss
    opt.guide_loss = lambda params: inner(params) * opt.hparam_raw["lr"].exp() * 1e308 * 1e10
    opt.step(_closure(model, train))
    assert abs(opt.last_hypergrads["lr"]) <= opt.nan_guard
    assert torch.isfinite(opt.hparam_raw["lr"])


def test_unknown_hyperparameter_rejected() -> None:
    model = nn.Linear(2, 2)
    with pytest.raises(ValueError, match="momentum"):
        LookaheadHD(model, lambda p: torch.zeros(()), tune=["momentum"])


def test_guide_loss_cycles_through_the_guidance_set_in_slices() -> None:
    torch.manual_seed(3)
    model = nn.Linear(4, 3).double()
    guide = {"input": torch.randn(12, 4, dtype=torch.float64), "labels": torch.randint(0, 3, (12,))}
    params = {k: v.detach() for k, v in model.named_parameters()}
    sliced = make_guide_loss(model, guide, batch_size=5)

    def ce(idx: list[int]) -> float:
        with torch.no_grad():
            return float(F.cross_entropy(model(guide["input"][idx]), guide["labels"][idx]))

    for want in ([0, 1, 2, 3, 4], [5, 6, 7, 8, 9], [10, 11, 0, 1, 2], [3, 4, 5, 6, 7]):
        assert float(sliced(params)) == pytest.approx(ce(want), rel=1e-12)
    whole = make_guide_loss(model, guide)  # None: the whole set every call
    assert float(whole(params)) == pytest.approx(ce(list(range(12))), rel=1e-12)
    assert float(make_guide_loss(model, guide, batch_size=50)(params)) == float(whole(params))
    with pytest.raises(ValueError, match="batch_size"):
        make_guide_loss(model, guide, batch_size=0)
