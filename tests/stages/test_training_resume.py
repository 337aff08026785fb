"""Checkpoint prefixes: a training stage continues from a cached epoch boundary and
ends with exactly the parameters of an uninterrupted run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from stages.base import StageContext
from stages.params import BuiltinModel, FinetuneParams, ModelSpec, training_boundaries
from stages.training import build_model, train

SPEC = ModelSpec(builtin=BuiltinModel(hidden_size=16, layers=1, heads=2, intermediate_size=32))


def _data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"input_ids": torch.randint(5, 50, (40, 12), generator=g),
            "attention_mask": torch.ones(40, 12, dtype=torch.long),
            "labels": torch.randint(0, 2, (40,), generator=g)}


def _train(epochs: int, schedule: str, resume: Path | None = None):
    p = FinetuneParams(epochs=epochs, batch_size=8, validation={"every": 1},
                       optimizer={"mode": "adamw", "lr": 1e-3, "schedule": schedule, "warmup": 0})
    model = build_model(SPEC, "sequence", vocab_size=60, max_length=12, num_labels=2, seed=0)
    saved: dict[int, Path] = {}

    def keep(epoch: int, write, seconds: float) -> None:
        assert seconds > 0
        saved[epoch] = Path(tempfile.mkdtemp(prefix="mt-boundary-"))
        write(saved[epoch])

    report = train(model, _data(), p, StageContext(progress=False, resume_dir=resume,
                                                    checkpoint=keep))
    return model, saved, report


def _same(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                 strict=True))


@pytest.mark.parametrize(("schedule", "short", "boundary", "long"), [
    ("constant", 2, 2, 3),  # a constant run's last state is a longer run's boundary
    ("wsd", 4, 3, 5),       # wsd: 4 epochs decay over 1, so epoch 3 is stable; 5 decay after 4
])
def test_continuing_from_a_boundary_is_bit_for_bit_an_uninterrupted_run(schedule, short,
                                                                         boundary, long):
    straight, _, full = _train(long, schedule)
    _, saved, _ = _train(short, schedule)
    continued, _, report = _train(long, schedule, resume=saved[boundary])
    assert report.summary["resumed_from_epoch"] == boundary
    assert report.steps == full.steps and report.losses == full.losses
    assert report.eval_curve == full.eval_curve
    # the stage's meta too (best epoch, held-out figures), but for where it resumed
    assert {k: v for k, v in report.summary.items() if k != "resumed_from_epoch"} == full.summary
    assert _same(straight, continued)
    # and the boundary state is not the end state: continuing really trained
    unfinished, _, _ = _train(boundary, "constant")
    assert schedule != "constant" or not _same(unfinished, straight)


def _params(**optimizer) -> dict:
    return FinetuneParams(epochs=4, optimizer={"mode": "adamw", "lr": 1e-3, "warmup": 0,
                                               **optimizer}).model_dump(mode="json")


def test_only_prefix_stable_schedules_have_boundaries():
    assert list(training_boundaries(_params(schedule="constant"))) == [1, 2, 3, 4]
    assert list(training_boundaries(_params(schedule="wsd", decay=0.25))) == [1, 2, 3]
    assert list(training_boundaries(_params(schedule="wsd", decay=0.5))) == [1, 2]
    for other in ({"schedule": "cosine"}, {"schedule": "linear"},
                  {"schedule": "constant", "warmup": 0.1}):
        assert training_boundaries(_params(**other)) == {}
    hd = FinetuneParams(epochs=4, optimizer={"mode": "hypergradient", "lr": 1e-3,
                                             "schedule": "constant"}).model_dump(mode="json")
    assert training_boundaries(hd) == {}
    best = {**_params(schedule="constant"), "validation": {"every": 1, "metric": "loss",
                                                           "select": "best", "patience": None}}
    assert training_boundaries(best) == {}


def test_a_boundary_is_shared_by_runs_that_only_end_differently():
    """Epoch 2 of a constant run of 4 epochs, of one of 3, and of a wsd run whose decay
    starts later are one state, so one key; the decay fraction is not part of it."""
    const4 = training_boundaries(_params(schedule="constant"))[2]
    const3 = training_boundaries({**_params(schedule="constant"), "epochs": 3})[2]
    wsd = training_boundaries(_params(schedule="wsd", decay=0.25))[2]
    wsd_other = training_boundaries(_params(schedule="wsd", decay=0.5))[2]
    assert const4 == const3 == wsd == wsd_other
    assert const4["epochs"] == 2 and "decay" not in const4["optimizer"]
    assert training_boundaries(_params(schedule="constant", lr=2e-3))[2] != const4


def test_continuing_from_the_runs_own_last_boundary_trains_nothing_more():
    """A constant run of 3 epochs finds the boundary after epoch 3 cached (a longer
    run passed it): it loads it, trains no step, and ends as the straight run."""
    straight, _, full = _train(3, "constant")
    _, saved, _ = _train(4, "constant")
    continued, _, report = _train(3, "constant", resume=saved[3])
    assert report.summary["resumed_from_epoch"] == 3 and report.steps == full.steps
    assert {k: v for k, v in report.summary.items() if k != "resumed_from_epoch"} == full.summary
    assert _same(straight, continued)
