"""Multi-fidelity tuners over the training stage's epochs, behind the same ask/tell interface.

All four run on one code path (``tuners.mf.core.RungTuner``: successive-halving
rungs, promotions continue from the cached checkpoint) and differ in how new
trials are chosen and which trials are promoted:

================  =====================================  ==========================
name              new trials                             promotions
================  =====================================  ==========================
eeipu-mf          EEIPU acquisition (``tuners.mf.eeipu``) ASHA
asha              uniformly random                       ASHA
tpe-hyperband     Optuna TPE                             Optuna ``HyperbandPruner``
one-epoch-topk    uniformly random                       top K of each bracket
================  =====================================  ==========================

``make_tuner`` knows them (``tuners.base._builtin_plugins`` calls
``register_mf_tuners``); ``make_mf_tuner`` is the same for these names.  The
tune flow (``flows.fidelity``) turns a segment into a pipeline run with the
training stage's epochs set.  Optuna is imported only when ``tpe-hyperband`` is made.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from tuners.base import Tuner, make_tuner, register_tuner
from tuners.mf.core import (
    ASHA,
    CheckpointEntry,
    MFCacheView,
    MFCandidate,
    OneEpochTopK,
    RungTuner,
    RunPlan,
    TrialRecord,
    geometric_rungs,
)
from tuners.space import SearchSpace

__all__ = [
    "ASHA",
    "CheckpointEntry",
    "MFCacheView",
    "MFCandidate",
    "MF_TUNERS",
    "OneEpochTopK",
    "RunPlan",
    "RungTuner",
    "TrialRecord",
    "geometric_rungs",
    "make_mf_tuner",
    "register_mf_tuners",
]

_LOADERS: dict[str, Callable[[], type[Tuner]]] = {
    "eeipu-mf": lambda: importlib.import_module("tuners.mf.eeipu").EEIPUMF,
    "asha": lambda: ASHA,
    "tpe-hyperband": lambda: importlib.import_module("tuners.mf.tpe_hyperband").TPEHyperband,
    "one-epoch-topk": lambda: OneEpochTopK,
}

MF_TUNERS: tuple[str, ...] = tuple(_LOADERS)


def make_mf_tuner(
    name: str, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10, **kwargs: Any
) -> Tuner:
    """A multi-fidelity tuner by name (``MF_TUNERS``), else ``make_tuner(name, ...)``.

    Multi-fidelity tuners take ``train_stage`` and ``max_epochs`` (a synthetic
    pipeline's ``fidelity_kwargs()``), ``min_epochs``, ``reduction_factor``.
    """
    if name in _LOADERS:
        return _LOADERS[name]()(space, budget=budget, seed=seed, warmup=warmup, **kwargs)
    return make_tuner(name, space, budget=budget, seed=seed, warmup=warmup, **kwargs)


def register_mf_tuners() -> None:
    """Add the multi-fidelity tuners to the global ``make_tuner`` registry (lazily loaded)."""
    for name, loader in _LOADERS.items():
        register_tuner(name, loader)
