"""What the in-stage optimizer adapted, per step: stored, plotted, reported.

Recording is a few Python float appends per step (values the step already has
on the host), so it costs nothing next to a forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["Trajectory", "plot_trajectory"]


def _clean(x: float) -> float | None:
    """JSON has no NaN/inf: store them as null."""
    return x if math.isfinite(x) else None


def _mean(xs: Sequence[float]) -> float:
    vals = [x for x in xs if x is not None and math.isfinite(x)]
    return sum(vals) / len(vals) if vals else float("nan")


class Trajectory:
    """Per-step record of a run's adapted quantities.

    ``lr[group]`` is the learning rate (or line-search step size) each group
    used at that step; ``step_size``/``ls_trials``/``searched_group`` exist for
    the line-search modes (``step_size`` is the accepted eta of the searched
    group(s), ``ls_trials`` the number of trial forward passes); ``hparams``
    for lookahead (``lr_multiplier`` and the other tuned values, taken before
    the meta update, i.e. the values the step used); ``hypergrad`` the
    hypergradient per group (Adam-HD) or per hyperparameter (lookahead).
    """

    def __init__(self, mode: str, group_names: Sequence[str]) -> None:
        self.mode = mode
        self.group_names = list(group_names)
        self.steps: list[int] = []
        self.loss: list[float] = []
        self.lr: dict[str, list[float]] = {name: [] for name in self.group_names}
        self.step_size: list[float] = []
        self.ls_trials: list[int] = []
        self.searched_group: list[str] = []
        self.hparams: dict[str, list[float]] = {}
        self.hypergrad: dict[str, list[float]] = {}
        self.guide_loss: list[float] = []

    def __len__(self) -> int:
        return len(self.steps)

    def record(
        self,
        step: int,
        loss: float,
        lrs: Sequence[float],
        *,
        step_size: float | None = None,
        trials: int | None = None,
        searched_group: str | None = None,
        hparams: Mapping[str, float] | None = None,
        hypergrad: Mapping[str, float] | None = None,
        guide_loss: float | None = None,
    ) -> None:
        """Append one step (``lrs`` in group order)."""
        self.steps.append(step)
        self.loss.append(loss)
        for name, lr in zip(self.group_names, lrs, strict=True):
            self.lr[name].append(lr)
        if step_size is not None:
            self.step_size.append(step_size)
        if trials is not None:
            self.ls_trials.append(trials)
        if searched_group is not None:
            self.searched_group.append(searched_group)
        for key, value in (hparams or {}).items():
            self.hparams.setdefault(key, []).append(value)
        for key, value in (hypergrad or {}).items():
            self.hypergrad.setdefault(key, []).append(value)
        if guide_loss is not None:
            self.guide_loss.append(guide_loss)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (non-finite floats become ``None``); only keys that apply."""
        out: dict[str, Any] = {
            "mode": self.mode,
            "steps": list(self.steps),
            "lr": {k: [_clean(x) for x in v] for k, v in self.lr.items()},
            "loss": [_clean(x) for x in self.loss],
        }
        if self.step_size:
            out["step_size"] = [_clean(x) for x in self.step_size]
        if self.ls_trials:
            out["ls_trials"] = list(self.ls_trials)
        if self.searched_group:
            out["searched_group"] = list(self.searched_group)
        if self.hparams:
            out["hparams"] = {k: [_clean(x) for x in v] for k, v in self.hparams.items()}
        if self.hypergrad:
            out["hypergrad"] = {k: [_clean(x) for x in v] for k, v in self.hypergrad.items()}
        if self.guide_loss:
            out["guide_loss"] = [_clean(x) for x in self.guide_loss]
        return out

    def summary(self) -> dict[str, Any]:
        """Scalar features for the outer tuner.

        ``final_lr``: mean over groups of each group's last learning rate;
        ``mean_lr``: mean over all groups and steps; ``min_lr``/``max_lr`` over
        groups and steps. Line search adds ``final_step_size``,
        ``mean_ls_trials`` and ``total_ls_trials``; lookahead adds
        ``final_<hparam>`` per tuned hyperparameter. NaN where nothing was
        recorded.
        """
        all_lrs = [x for v in self.lr.values() for x in v]
        finals = [v[-1] for v in self.lr.values() if v]
        out: dict[str, Any] = {
            "mode": self.mode,
            "n_steps": len(self.steps),
            "final_lr": _mean(finals),
            "mean_lr": _mean(all_lrs),
            "min_lr": min(all_lrs) if all_lrs else float("nan"),
            "max_lr": max(all_lrs) if all_lrs else float("nan"),
            "final_loss": self.loss[-1] if self.loss else float("nan"),
        }
        if self.step_size:
            out["final_step_size"] = self.step_size[-1]
        if self.ls_trials:
            out["mean_ls_trials"] = sum(self.ls_trials) / len(self.ls_trials)
            out["total_ls_trials"] = sum(self.ls_trials)
        for key, values in self.hparams.items():
            if values:
                out[f"final_{key}"] = values[-1]
        return out


def plot_trajectory(traj: Mapping[str, Any], path: Path, label: str | None = None) -> Path:
    """Draw a trajectory dict (``Trajectory.to_dict()``) to a PNG and return its path.

    ``label`` names what trained (e.g. the stage and its key): it heads the title.

    Panels: learning rate per group vs step (log scale when positive); for the
    line-search modes the accepted step size with the trial count on a second
    axis; for lookahead the adapted hyperparameters; the training loss. Uses
    the Agg canvas directly, so no global matplotlib backend is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    steps = traj.get("steps", [])
    panels = ["lr"]
    if traj.get("step_size") or traj.get("ls_trials"):
        panels.append("search")
    if traj.get("hparams"):
        panels.append("hparams")
    panels.append("loss")

    fig = Figure(figsize=(7, 2.6 * len(panels)), constrained_layout=True)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]

    def _xy(values: Sequence[float | None]) -> tuple[list[int], list[float]]:
        pairs = [(s, v) for s, v in zip(steps, values, strict=False) if v is not None]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    for ax, panel in zip(axes, panels, strict=True):
        if panel == "lr":
            positive = True
            for name, values in traj.get("lr", {}).items():
                xs, ys = _xy(values)
                positive &= all(y > 0 for y in ys)
                ax.plot(xs, ys, label=name, lw=1)
            if positive and traj.get("lr"):
                ax.set_yscale("log")
            ax.set_ylabel("learning rate")
            if len(traj.get("lr", {})) <= 14:
                ax.legend(fontsize=6, ncol=2)
        elif panel == "search":
            xs, ys = _xy(traj.get("step_size", []))
            ax.plot(xs, ys, color="C0", lw=1)
            if ys and all(y > 0 for y in ys):
                ax.set_yscale("log")
            ax.set_ylabel("accepted step size", color="C0")
            trials = traj.get("ls_trials", [])
            if trials:
                ax2 = ax.twinx()
                ax2.plot(steps[: len(trials)], trials, color="C1", lw=0.8, alpha=0.7)
                ax2.set_ylabel("line-search trials", color="C1")
        elif panel == "hparams":
            positive = True
            for name, values in traj["hparams"].items():
                xs, ys = _xy(values)
                positive &= all(y > 0 for y in ys)
                ax.plot(xs, ys, label=name, lw=1)
            if positive:
                ax.set_yscale("log")  # lr multiplier ~1 next to eps ~1e-8
            ax.set_ylabel("hyperparameter")
            ax.legend(fontsize=6)
        else:
            xs, ys = _xy(traj.get("loss", []))
            ax.plot(xs, ys, color="k", lw=0.8)
            ax.set_ylabel("training loss")
    axes[-1].set_xlabel("step")
    title = f"in-stage optimizer: {traj.get('mode', '?')}, {len(steps)} steps"
    fig.suptitle(f"{label} — {title}" if label else title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100)
    return path
