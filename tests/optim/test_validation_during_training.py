"""Held-out evaluation while training: the curve, the best epoch, early stopping.

Real training of the tiny builtin BERT on the generated target task.
"""

from __future__ import annotations

import numpy as np
import torch

from stages.base import StageContext
from stages.params import BuiltinModel, FinetuneParams, ModelSpec
from stages.training import build_model, train


def _data(n: int, seed: int) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 60, size=(n, 12))
    labels = (ids[:, 0] > 32).astype(np.int64)  # learnable from the first token
    return {"input_ids": torch.tensor(ids), "attention_mask": torch.ones(n, 12, dtype=torch.long),
            "labels": torch.tensor(labels)}


def _model() -> torch.nn.Module:
    spec = ModelSpec(builtin=BuiltinModel(hidden_size=16, layers=1, heads=2, intermediate_size=32))
    return build_model(spec, "sequence", vocab_size=64, max_length=16, num_labels=2, seed=0)


def _train(**validation) -> tuple[torch.nn.Module, object]:
    model = _model()
    p = FinetuneParams(epochs=6, batch_size=16, seed=0, validation=validation,
                       optimizer={"mode": "adamw", "lr": 3e-3, "schedule": "constant",
                                  "warmup": 0})
    report = train(model, _data(96, 0), p, StageContext(progress=False), guide=_data(48, 1))
    return model, report


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values(), strict=True))


def test_evaluation_changes_nothing_it_does_not_select():
    evaluated, report = _train()
    silent, quiet = _train(every=0)
    assert _same(evaluated, silent)  # evaluating draws no random numbers
    assert [c["epoch"] for c in report.eval_curve] == [1, 2, 3, 4, 5, 6]
    assert quiet.eval_curve == [] and "best_epoch" not in quiet.summary
    assert report.summary["best_epoch"] == min(report.eval_curve, key=lambda c: c["loss"])["epoch"]


def test_select_best_keeps_the_best_epochs_weights():
    from stages.training import evaluate_held_out

    model, report = _train(select="best", metric="loss")
    best = report.summary["best_epoch"]
    loss, _ = evaluate_held_out(model, _data(48, 1), 16)
    assert abs(loss - report.summary["best_eval_loss"]) < 1e-6
    assert report.summary["selected_epoch"] == best


def test_patience_stops_training_early():
    _, full = _train()
    _, early = _train(patience=1, metric="accuracy")
    curve = [c["accuracy"] for c in full.eval_curve]
    # the first epoch whose accuracy does not beat the best so far ends the run
    first_flat = next(i for i in range(1, len(curve)) if curve[i] <= max(curve[:i]))
    assert early.summary["stopped_early"] and early.summary["epochs_run"] == first_flat + 1
    assert early.steps < full.steps
