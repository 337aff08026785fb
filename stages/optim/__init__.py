"""In-stage optimizers: hyperparameters adapted while a fine-tuning stage trains.

Modes (``settings.mode``): ``adamw`` (baseline with a schedule),
``hypergradient`` (Adam-HD), ``lookahead`` (greedy one-step lookahead
hypergradient on a guidance batch), ``adam_sls`` and ``pla_sls`` (Adam with an
Armijo line search, global or per layer). The training loop only needs
:func:`parse_optimizer_settings`, :func:`build_optimizer` and the returned
:class:`StepRunner`; the optimizers are plain ``torch.optim.Optimizer``
subclasses usable on their own. See ``shared/spec/IN_STAGE.md``.

Names load on first use (PEP 562): the settings are imported by config code
that must not pay for torch, which only the optimizers need.
"""

import importlib
from typing import Any

_EXPORTS: dict[str, str] = {
    "AdamHD": "adam_hd",
    "NonFiniteLossError": "errors",
    "find_layer_stack": "groups", "param_groups_by_layer": "groups",
    "LookaheadHD": "lookahead", "ce_loss_parts": "lookahead", "make_guide_loss": "lookahead",
    "StepRunner": "runner", "build_optimizer": "runner", "model_logits": "runner",
    "schedule_fn": "schedules",
    "AdamSLSSettings": "settings", "AdamWSettings": "settings",
    "HypergradientSettings": "settings", "LookaheadSettings": "settings",
    "OptimizerMode": "settings", "OptimizerSettings": "settings",
    "OptimizerSettingsBase": "settings", "PLASLSSettings": "settings",
    "parse_optimizer_settings": "settings",
    "PLASLS": "sls", "AdamSLS": "sls", "SearchRecord": "sls", "deterministic_closure": "sls",
    "Trajectory": "trajectory", "plot_trajectory": "trajectory",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
