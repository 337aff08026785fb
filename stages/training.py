"""The one training loop both fine-tuning stages use, and model loading.

The optimizer mode (adamw, hypergradient, lookahead, adam_sls, pla_sls) is a
parameter of this loop: `stages.optim.build_optimizer` returns a runner that
does one step per batch, whatever the mode, and records the trajectory.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from stages.base import StageContext
from stages.optim import build_optimizer, parse_optimizer_settings, plot_trajectory
from stages.params import FinetuneParams, Head, ModelSpec, Validation


def build_model(spec: ModelSpec, head: Head, *, vocab_size: int, max_length: int,
                num_labels: int, seed: int, checkpoint: Path | None = None) -> torch.nn.Module:
    """From a checkpoint folder, a pretrained name/path, or the builtin config.

    A checkpoint saved with another head (multiple choice -> classification)
    keeps its encoder; the new head is initialized from `seed`.
    """
    from transformers import (
        AutoModelForMultipleChoice,
        AutoModelForSequenceClassification,
        BertConfig,
        BertForMultipleChoice,
        BertForSequenceClassification,
    )

    _quiet_transformers()
    torch.manual_seed(seed)
    auto = AutoModelForSequenceClassification if head == "sequence" else AutoModelForMultipleChoice
    kwargs: dict[str, Any] = {"num_labels": num_labels} if head == "sequence" else {}
    source = str(checkpoint) if checkpoint is not None else spec.name_or_path
    if source is not None:
        return auto.from_pretrained(source, ignore_mismatched_sizes=True, **kwargs)
    b = spec.builtin
    cfg = BertConfig(vocab_size=vocab_size, hidden_size=b.hidden_size, num_hidden_layers=b.layers,
                     num_attention_heads=b.heads, intermediate_size=b.intermediate_size,
                     hidden_dropout_prob=b.dropout, attention_probs_dropout_prob=b.dropout,
                     max_position_embeddings=max(64, max_length), **kwargs)
    cls = BertForSequenceClassification if head == "sequence" else BertForMultipleChoice
    return cls(cfg)


def _quiet_transformers() -> None:
    """No per-load progress bars or mismatch reports: the new head is intended."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def to_tensors(columns: Mapping[str, np.ndarray], device: str) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v.astype(np.int64)).to(device) for k, v in columns.items()}


@dataclass
class TrainReport:
    steps: int
    seconds: float
    samples_per_s: float
    final_loss: float
    losses: list[float]
    forward_passes: int
    trajectory: dict[str, Any]
    summary: dict[str, float]
    eval_curve: list[dict[str, float]]


def train(model: torch.nn.Module, data: Mapping[str, torch.Tensor], p: FinetuneParams,
          ctx: StageContext, *, guide: Mapping[str, torch.Tensor] | None = None,
          desc: str = "train") -> TrainReport:
    """Shuffled mini-batch epochs; one `runner.step(batch)` per batch."""
    n = int(data["labels"].shape[0])
    steps_per_epoch = math.ceil(n / p.batch_size)
    total = steps_per_epoch * p.epochs if p.max_steps is None else p.max_steps
    settings = parse_optimizer_settings(p.optimizer)
    runner = build_optimizer(model, settings, total_steps=total,
                             guide_batch=dict(guide) if guide is not None else None,
                             steps_per_epoch=steps_per_epoch,
                             decay_steps=steps_per_epoch * p.decay_epochs
                             if p.max_steps is None else None)
    model.train()
    gen = torch.Generator().manual_seed(p.seed)
    torch.manual_seed(p.seed)
    losses: list[float] = []
    step, epoch, start = 0, 0, time.perf_counter()
    log_every = max(1, total // 10)
    tracker = _EvalTracker(p.validation, guide if p.validation.every else None)
    earlier_s = 0.0  # training seconds of the boundary resumed from
    if ctx.resume_dir is not None:
        step, epoch, losses, earlier_s = _restore(ctx.resume_dir, model, runner, gen, tracker)
        ctx.logger.info("%s continues from its checkpoint after epoch %d (step %d)", desc,
                        epoch, step)
    resumed_from = epoch
    with _progress(ctx, desc, total, done=step) as advance:
        while step < total and not tracker.stop:
            perm = torch.randperm(n, generator=gen).to(data["labels"].device)
            for i in range(0, n, p.batch_size):
                if step >= total:
                    break
                idx = perm[i:i + p.batch_size]
                loss = runner.step({k: v[idx] for k, v in data.items()})
                losses.append(loss)
                step += 1
                advance(loss)
                if step % log_every == 0 or step == total:
                    ctx.logger.info("%s step %d/%d loss %.4f", desc, step, total, loss)
            epoch += 1
            if point := tracker.after_epoch(model, epoch, step, batch_size=p.batch_size):
                ctx.logger.info("%s epoch %d: held-out loss %.4f accuracy %.3f%s", desc, epoch,
                                point["loss"], point["accuracy"],
                                " (best)" if point["epoch"] == tracker.best_epoch else "")
            if ctx.checkpoint is not None:
                seconds = earlier_s + time.perf_counter() - start
                ctx.checkpoint(epoch, functools.partial(
                    _save_state, model=model, runner=runner, gen=gen, tracker=tracker, step=step,
                    epoch=epoch, losses=list(losses), seconds=seconds), seconds)
    tracker.finish(model)
    if tracker.stop:
        ctx.logger.info("%s stopped early after epoch %d (no held-out improvement in %d "
                        "evaluations; best epoch %d)", desc, epoch, p.validation.patience,
                        tracker.best_epoch)
    seconds = time.perf_counter() - start
    tail = losses[-steps_per_epoch:]
    traj = runner.trajectory.to_dict()
    return TrainReport(steps=step, seconds=seconds, samples_per_s=step * p.batch_size / seconds,
                       final_loss=float(np.mean(tail)), losses=losses,
                       forward_passes=runner.forward_passes, trajectory=traj,
                       summary={**runner.trajectory.summary(), **tracker.summary(epoch),
                                **({"resumed_from_epoch": resumed_from} if resumed_from else {})},
                       eval_curve=tracker.curve)


# ---------------------------------------------------------------- boundary checkpoints

def _save_state(folder: Path, model: torch.nn.Module, runner: Any, gen: torch.Generator,
                tracker: _EvalTracker, step: int, epoch: int, losses: list[float],
                seconds: float) -> None:
    """Everything an uninterrupted run would carry past this epoch: weights, AdamW's
    moments and step counts, the schedule's position, both RNGs, the loss history and
    the trajectory. Tensors as safetensors, the rest as JSON (never pickle)."""
    from safetensors.torch import save_file, save_model

    save_model(model, str(folder / "model.safetensors"))
    opt = runner.optimizer.state_dict()
    tensors = {"rng.torch": torch.get_rng_state(), "rng.data": gen.get_state()}
    for i, st in opt["state"].items():
        for name, value in st.items():
            tensors[f"opt.{i}.{name}"] = value.detach().cpu().contiguous()
    save_file(tensors, str(folder / "state.safetensors"))
    traj = runner.trajectory
    doc = {"step": step, "epoch": epoch, "seconds": seconds, "losses": losses,
           "param_groups": opt["param_groups"],
           "scheduler": {k: v for k, v in runner.scheduler.state_dict().items()
                         if k != "lr_lambdas"},
           "forward_passes": runner.forward_passes, "n_steps": runner.n_steps,
           "trajectory": {"steps": traj.steps, "loss": traj.loss, "lr": traj.lr},
           "eval_curve": tracker.curve, "best_epoch": tracker.best_epoch,
           "best_score": tracker.best_score if math.isfinite(tracker.best_score) else None}
    (folder / "state.json").write_text(json.dumps(doc))


def _restore(folder: Path, model: torch.nn.Module, runner: Any, gen: torch.Generator,
             tracker: _EvalTracker) -> tuple[int, int, list[float], float]:
    """Put a boundary's state back (see _save_state); (step, epoch, losses, seconds)."""
    from safetensors.torch import load_file, load_model

    load_model(model, str(folder / "model.safetensors"))
    tensors = load_file(str(folder / "state.safetensors"))
    doc = json.loads((folder / "state.json").read_text())
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith("opt."):
            _, i, field = name.split(".", 2)
            state.setdefault(int(i), {})[field] = value
    groups = [{**g, "betas": tuple(g["betas"])} for g in doc["param_groups"]]
    runner.optimizer.load_state_dict({"state": state, "param_groups": groups})
    runner.scheduler.load_state_dict({**doc["scheduler"],
                                      "lr_lambdas": [None] * len(groups)})
    runner.forward_passes, runner.n_steps = doc["forward_passes"], doc["n_steps"]
    traj = runner.trajectory
    traj.steps, traj.loss, traj.lr = (doc["trajectory"]["steps"], doc["trajectory"]["loss"],
                                      doc["trajectory"]["lr"])
    tracker.curve = doc["eval_curve"]
    tracker.best_epoch = doc["best_epoch"]
    tracker.best_score = -math.inf if doc["best_score"] is None else doc["best_score"]
    torch.set_rng_state(tensors["rng.torch"])
    gen.set_state(tensors["rng.data"])
    return doc["step"], doc["epoch"], list(doc["losses"]), float(doc["seconds"])


class _EvalTracker:
    """Evaluates the held-out slice after epochs; remembers the best; says when to stop."""

    def __init__(self, v: Validation, held_out: Mapping[str, torch.Tensor] | None) -> None:
        self.v, self.held_out = v, held_out
        self.curve: list[dict[str, float]] = []
        self.best_epoch, self.best_score, self.best_state = 0, -math.inf, None
        self.stop = False

    def after_epoch(self, model: torch.nn.Module, epoch: int, step: int, *,
                    batch_size: int) -> dict[str, float] | None:
        if self.held_out is None or epoch % self.v.every:
            return None
        loss, accuracy = evaluate_held_out(model, self.held_out, batch_size)
        point = {"epoch": epoch, "step": step, "loss": loss, "accuracy": accuracy}
        self.curve.append(point)
        score = -loss if self.v.metric == "loss" else accuracy
        if score > self.best_score:
            self.best_epoch, self.best_score = epoch, score
            if self.v.select == "best":
                self.best_state = {k: t.detach().clone() for k, t in model.state_dict().items()}
        elif self.v.patience is not None:
            since = sum(1 for c in self.curve if c["epoch"] > self.best_epoch)
            self.stop = since >= self.v.patience
        return point

    def finish(self, model: torch.nn.Module) -> None:
        if self.best_state is not None and self.best_epoch != self.curve[-1]["epoch"]:
            model.load_state_dict(self.best_state)

    def summary(self, epochs_run: int) -> dict[str, Any]:
        if not self.curve:
            return {}
        best = next(c for c in self.curve if c["epoch"] == self.best_epoch)
        return {"epochs_run": epochs_run, "best_epoch": self.best_epoch,
                "best_eval_loss": best["loss"], "best_eval_accuracy": best["accuracy"],
                "final_eval_loss": self.curve[-1]["loss"], "stopped_early": self.stop,
                "selected_epoch": self.best_epoch if self.v.select == "best" else epochs_run}


@torch.no_grad()
def evaluate_held_out(model: torch.nn.Module, data: Mapping[str, torch.Tensor],
                      batch_size: int) -> tuple[float, float]:
    """Mean loss and accuracy on held-out data, in eval mode (no dropout, no RNG draws)."""
    was_training = model.training
    model.eval()
    n = int(data["labels"].shape[0])
    total_loss, correct = 0.0, 0
    for i in range(0, n, batch_size):
        batch = {k: v[i:i + batch_size] for k, v in data.items()}
        out = model(**batch)
        total_loss += float(out.loss) * int(batch["labels"].shape[0])
        correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
    model.train(was_training)
    return total_loss / max(n, 1), correct / max(n, 1)


def log_console(logger: Any) -> Any:
    """The rich Console that `logger`'s records are printed on, if one is (else None).

    Prefect's console handler (like rich's RichHandler) prints through its own
    Console, bound to the real stderr when logging was configured. A progress
    bar on another Console is redrawn on the same terminal lines as those log
    lines, and both garble; on the handler's own Console, rich prints each log
    line above the live bar. Found by walking the logger's handlers (a
    LoggerAdapter's logger first), so the stage needs no Prefect import.
    """
    from rich.console import Console

    lg = getattr(logger, "logger", logger)
    while isinstance(lg, logging.Logger):
        for h in lg.handlers:
            console = getattr(h, "console", None)
            if isinstance(console, Console):
                return console
        if not lg.propagate:
            break
        lg = lg.parent
    return None


class _progress:
    """A rich progress bar when asked for, else nothing (tests, --json).

    The bar shares the Console of the logger's console handler (`log_console`),
    so log lines print above it instead of over it; the loss column is empty
    until the first step has one.
    """

    def __init__(self, ctx: StageContext, desc: str, total: int, done: int = 0):
        self.ctx, self.desc, self.total, self.done = ctx, desc, total, done
        self.bar: Any = None
        self.themed: Any = None

    def __enter__(self):
        if self.ctx.progress:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.theme import Theme

            console = log_console(self.ctx.logger)
            if console is not None:  # Prefect's theme has only its log styles: add the bar's
                console.push_theme(Theme(_bar_styles()))
                self.themed = console
            self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("{task.fields[loss]}"),
                                TimeElapsedColumn(), TimeRemainingColumn(), transient=True,
                                console=console)
            self.bar.start()
            self.task = self.bar.add_task(self.desc, total=self.total, completed=self.done,
                                          loss="")
            return lambda loss: self.bar.update(self.task, advance=1, loss=f"loss {loss:.4f}")
        return lambda loss: None

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
        if self.themed is not None:
            self.themed.pop_theme()


def _bar_styles() -> dict[str, Any]:
    """rich's default styles for progress bars (bar.*, progress.*)."""
    from rich.default_styles import DEFAULT_STYLES

    return {k: v for k, v in DEFAULT_STYLES.items() if k.startswith(("bar.", "progress."))}


def save_outputs(model: torch.nn.Module, report: TrainReport, workdir: Path,
                 label: str | None = None) -> dict[str, Any]:
    """Checkpoint (safetensors), trajectory JSON + PNG (titled with `label`: the stage
    and its key), training summary."""
    model.save_pretrained(workdir / "checkpoint")
    (workdir / "trajectory.json").write_text(json.dumps(report.trajectory))
    plot_trajectory(report.trajectory, workdir / "trajectory.png", label=label)
    summary = {"steps": report.steps, "train_seconds": report.seconds,
               "samples_per_s": report.samples_per_s, "final_loss": report.final_loss,
               "forward_passes": report.forward_passes, **report.summary}
    # manifests are strict JSON: an unrecorded quantity is null, not NaN
    summary = {k: None if isinstance(v, float) and not math.isfinite(v) else v
               for k, v in summary.items()}
    (workdir / "train.json").write_text(json.dumps({**summary, "losses": report.losses,
                                                    "eval_curve": report.eval_curve}))
    return summary
