"""Fixtures for flow tests: one Prefect test harness per session, tiny configs."""

from __future__ import annotations

import copy
import os
from typing import Any

import pytest

# A real but tiny pipeline: every stage trains/evaluates for real in about a second.
TINY: dict[str, Any] = {
    "device": "cpu",
    "data_prep": {
        "builtin": {"n_train": 160, "n_validation": 100, "corpus_size": 300},
        "intermediate": {"n_examples": 120},
        "max_length": 24,
        "guidance_min": 8,
    },
    "intermediate_finetune": {
        "epochs": 1,
        "model": {"builtin": {"hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}},
    },
    "target_finetune": {"epochs": 1},
}


@pytest.fixture
def tiny() -> dict[str, Any]:
    return copy.deepcopy(TINY)


@pytest.fixture
def store_url(tmp_path) -> str:
    return str(tmp_path / "store")


@pytest.fixture
def cli_env(prefect_api: str, tmp_path) -> dict[str, str]:
    """Environment for `memotune` subprocesses: the session's Prefect API, own lock dir."""
    env = dict(os.environ)
    env.update(PREFECT_API_URL=prefect_api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HOME=str(tmp_path / "home"), MEMOTUNE_FETCH_DIR=str(tmp_path / "fetch"))
    return env
