"""The light path: planning and cached runs never load the ML stack.

A fully cached run is the common case of a study (every trial shares a
prefix), so what it imports is what every trial pays. Each check runs in a
fresh interpreter: the test process itself has torch loaded already.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from flows.config import load_config
from flows.pipeline import pipeline_flow

HEAVY = ("torch", "transformers", "botorch", "gpytorch", "datasets", "numpy", "pyarrow")


def _fresh(code: str, env: dict[str, str] | None = None) -> Any:
    """Run code in a new interpreter; it prints one JSON document as its last line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **(env or {})})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


LOADED = f"sorted(m for m in {HEAVY!r} if m in sys.modules)"


def test_loading_a_config_and_planning_import_no_ml_stack():
    loaded = _fresh(f"""
import json, sys
import flows.cli, flows.pipeline
from flows.config import load_config
from flows.plan import stage_keys
stage_keys(load_config())
print(json.dumps({LOADED}))
""")
    assert loaded == []


def test_a_fully_cached_run_imports_no_ml_stack(prefect_api, tiny, store_url, tmp_path):
    doc = load_config(doc=tiny).model_dump(mode="json")
    pipeline_flow(doc, store_url, progress=False, lock_dir=str(tmp_path / "locks"))
    out = _fresh(f"""
import json, sys
from flows.pipeline import pipeline_flow
summary = pipeline_flow({doc!r}, {store_url!r}, progress=False, lock_dir={str(tmp_path / "locks")!r})
print(json.dumps({{"statuses": [s["status"] for s in summary["stages"]], "loaded": {LOADED}}}))
""", env={"PREFECT_API_URL": prefect_api})
    assert out["statuses"] == ["cached"] * 4
    assert out["loaded"] == []
