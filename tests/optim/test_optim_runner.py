"""StepRunner end to end on a tiny BERT: every mode trains, NaN handling, trajectories."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMultipleChoice

from stages.optim import (
    NonFiniteLossError,
    build_optimizer,
    parse_optimizer_settings,
    plot_trajectory,
    schedule_fn,
)

MakeBatch = Callable[..., dict[str, torch.Tensor]]
STEPS = 60
MODE_SETTINGS = {
    "adamw": {"mode": "adamw", "lr": 1e-2, "warmup": 0.1, "grad_clip": 1.0},
    "hypergradient": {"mode": "hypergradient", "lr": 3e-3, "hypergrad_lr": 1e-5, "lr_max": 2e-2},
    "hypergradient_mult": {
        "mode": "hypergradient",
        "lr": 3e-3,
        "rule": "multiplicative",
        "hypergrad_lr": 0.05,
        "n_groups": None,
    },
    "lookahead": {
        "mode": "lookahead",
        "lr": 3e-3,
        "tune": ["lr", "weight_decay", "label_smoothing"],
        "meta_lr": 1e-2,
    },
    "adam_sls": {"mode": "adam_sls"},
    "pla_sls": {"mode": "pla_sls", "n_groups": 4},
}


@pytest.mark.parametrize("name", list(MODE_SETTINGS))
def test_each_mode_trains_and_records(
    name: str, tiny_bert: nn.Module, tmp_path: Path, make_batch: MakeBatch
) -> None:
    settings = parse_optimizer_settings(MODE_SETTINGS[name])
    runner = build_optimizer(tiny_bert, settings, STEPS, guide_batch=make_batch(32, seed=99))
    losses = [runner.step(make_batch(16, seed=i % 4)) for i in range(STEPS)]
    assert all(isinstance(x, float) and math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < first - 0.3, (first, last)

    traj = runner.trajectory.to_dict()
    json.dumps(traj)
    assert traj["mode"] == settings.mode
    assert traj["steps"] == list(range(1, STEPS + 1))
    assert traj["loss"] == pytest.approx(losses)
    assert all(len(v) == STEPS for v in traj["lr"].values())
    mode = settings.mode
    if mode in ("adamw", "hypergradient"):
        assert runner.forward_passes == STEPS
    if mode == "lookahead":
        assert runner.forward_passes == 2 * STEPS
        assert set(traj["hparams"]) == {"lr_multiplier", "weight_decay", "label_smoothing"}
        assert traj["hparams"]["lr_multiplier"][0] == pytest.approx(1.0)
        assert traj["hparams"]["lr_multiplier"][-1] != pytest.approx(1.0)
    if mode in ("adam_sls", "pla_sls"):
        assert len(traj["step_size"]) == len(traj["ls_trials"]) == STEPS
        assert runner.forward_passes == STEPS + sum(traj["ls_trials"])
    if mode == "pla_sls":
        assert list(traj["lr"]) == ["embeddings", "layers.0", "layers.1", "head"]
        assert traj["searched_group"][:6] == ["global"] * 6
        assert traj["searched_group"][6:10] == ["embeddings", "layers.0", "layers.1", "head"]
    if mode == "hypergradient":
        lrs = next(iter(traj["lr"].values()))
        assert lrs[-1] != lrs[0]

    summary = runner.trajectory.summary()
    json.dumps(summary)
    assert summary["n_steps"] == STEPS and math.isfinite(summary["final_lr"])
    png = plot_trajectory(traj, tmp_path / f"{name}.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_adamw_is_the_plain_pytorch_loop(tiny_bert: nn.Module, make_batch: MakeBatch) -> None:
    """Same ops as zero_grad/forward/CE/backward/clip/step/scheduler: identical weights."""
    plain = copy.deepcopy(tiny_bert)
    settings = parse_optimizer_settings({"mode": "adamw", "lr": 1e-3, "grad_clip": 0.5})
    runner = build_optimizer(tiny_bert, settings, 10)
    torch.manual_seed(5)
    for i in range(10):
        runner.step(make_batch(8, seed=i))

    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_fn("cosine", 10, 0.1))
    torch.manual_seed(5)
    for i in range(10):
        batch = make_batch(8, seed=i)
        opt.zero_grad()
        logits = plain(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        F.cross_entropy(logits, batch["labels"]).backward()
        torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.5)
        opt.step()
        sched.step()
    for a, b in zip(tiny_bert.parameters(), plain.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["adamw", "hypergradient", "adam_sls", "pla_sls", "lookahead"])
def test_nan_loss_raises_naming_step_and_mode(
    mode: str, tiny_bert: nn.Module, make_batch: MakeBatch
) -> None:
    runner = build_optimizer(
        tiny_bert, parse_optimizer_settings({"mode": mode}), 5, guide_batch=make_batch(8, seed=9)
    )
    runner.step(make_batch(8, seed=0))
    with torch.no_grad():
        tiny_bert.classifier.weight[0, 0] = float("nan")  # poisoned weights
    before = tiny_bert.bert.embeddings.word_embeddings.weight.detach().clone()
    with pytest.raises(NonFiniteLossError, match=rf"step 2 \(mode '{mode}'\)") as err:
        runner.step(make_batch(8, seed=1))
    assert err.value.step == 2 and err.value.mode == mode
    assert torch.equal(tiny_bert.bert.embeddings.word_embeddings.weight, before)


def test_inf_input_raises() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    runner = build_optimizer(model, parse_optimizer_settings({"mode": "adamw"}), 3)
    x = torch.randn(4, 3)
    x[0, 0] = float("inf")
    with pytest.raises(NonFiniteLossError, match="step 1"):
        runner.step({"input": x, "labels": torch.tensor([0, 1, 0, 1])})


def test_lookahead_nan_guide_loss_is_guarded(tiny_bert: nn.Module, make_batch: MakeBatch) -> None:
    guide = make_batch(8, seed=9)
    guide["labels"] = torch.full_like(guide["labels"], -100)  # CE over nothing: NaN
    settings = parse_optimizer_settings(
        {"mode": "lookahead", "lr": 3e-3, "tune": ["lr", "beta1"], "meta_lr": 1e-2}
    )
    runner = build_optimizer(tiny_bert, settings, 5, guide_batch=guide)
    losses = [runner.step(make_batch(16, seed=i)) for i in range(5)]
    assert all(math.isfinite(x) for x in losses)
    opt = runner.optimizer
    assert all(torch.isfinite(v) for v in opt.hparam_raw.values())
    assert opt.hparam_values()["lr"] == pytest.approx(1.0)
    assert all(torch.isfinite(p).all() for p in tiny_bert.parameters())
    traj = runner.trajectory.to_dict()
    assert traj["guide_loss"] == [None] * 5
    assert traj["hypergrad"]["lr"] == [0.0] * 5
    json.dumps(traj, allow_nan=False)


def test_lookahead_needs_guide_batch(tiny_bert: nn.Module) -> None:
    with pytest.raises(ValueError, match="guide_batch"):
        build_optimizer(tiny_bert, parse_optimizer_settings({"mode": "lookahead"}), 5)


def test_hypergradient_schedule_scales_adapted_rate(
    tiny_bert: nn.Module, make_batch: MakeBatch
) -> None:
    settings = parse_optimizer_settings(
        {"mode": "hypergradient", "lr": 1e-3, "warmup": 0.5, "schedule": "linear"}
    )
    runner = build_optimizer(tiny_bert, settings, 4)
    runner.step(make_batch(8, seed=0))
    assert runner.trajectory.lr["all"][0] == pytest.approx(1e-3 / 3)  # warm-up 1/(2+1)


@pytest.mark.parametrize("mode", ["adamw", "adam_sls"])
def test_multiple_choice_model(mode: str, tiny_config: BertConfig) -> None:
    torch.manual_seed(0)
    model = BertForMultipleChoice(tiny_config)
    model.eval()  # the runner trains in train mode regardless
    ids = torch.randint(5, 50, (4, 3, 6))
    batch = {
        "input_ids": ids,
        "attention_mask": torch.ones_like(ids),
        "labels": torch.tensor([0, 2, 1, 0]),
    }
    runner = build_optimizer(model, parse_optimizer_settings({"mode": mode}), 2)
    assert math.isfinite(runner.step(batch))
    assert model.training


@pytest.mark.parametrize("mode", ["adam_sls", "pla_sls"])
def test_line_search_reset_period_defaults_to_the_real_epoch(mode: str, tiny_bert: nn.Module) -> None:
    default = parse_optimizer_settings({"mode": mode})
    assert build_optimizer(tiny_bert, default, 90, steps_per_epoch=30).optimizer.n_batches_per_epoch == 30
    assert build_optimizer(tiny_bert, default, 90).optimizer.n_batches_per_epoch == 500
    fixed = parse_optimizer_settings({"mode": mode, "n_batches_per_epoch": 7})
    assert build_optimizer(tiny_bert, fixed, 90, steps_per_epoch=30).optimizer.n_batches_per_epoch == 7
