"""Ask/tell hyperparameter tuners for multi-stage pipelines: EEIPU and baselines.

No Prefect and no training code in here: the tune flow drives a tuner through
``ask``/``tell``, and ``simulate`` drives one against a synthetic pipeline.

Plugins (``make_tuner`` names): ``eeipu``, ``ei``, ``eips``, ``carbo``,
``ms_carbo``, ``random``, ``tpe`` (Optuna is imported only when ``tpe`` is made).
"""

from __future__ import annotations

import importlib
from typing import Any

# Names load on first use (PEP 562): the config code reads the search spec
# (tuners.search_spec, pydantic only) without loading torch and BoTorch.
_EXPORTS: dict[str, str] = {
    "SearchSpace": "space", "Param": "space", "FloatParam": "space", "IntParam": "space",
    "CategoricalParam": "space", "prefix_key": "space",
    "Tuner": "base", "Candidate": "base", "Observation": "base", "CacheView": "base",
    "CachedPrefix": "base", "make_tuner": "base", "register_tuner": "base",
    "available_tuners": "base",
    "simulate": "simulate", "Trace": "simulate",
    "SyntheticStage": "synthetic", "SyntheticPipeline": "synthetic",
    "synthetic_suite": "synthetic",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value
