"""benchmarks/bench_study.py keeps hours of committed studies: a run with another
preset or budget must not overwrite them (the default budget once differed from the
committed file's and would have replaced it after the first study)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_a_results_file_of_another_budget_is_refused_and_left_as_it_was(tmp_path):
    results = tmp_path / "results.json"
    committed = '{\n "preset": "study-small",\n "budget": 150.0,\n "runs": {\n  \n }\n}\n'
    results.write_text(committed)
    done = subprocess.run([sys.executable, "benchmarks/bench_study.py", "--budget", "240",
                           "--results", str(results)], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        f"error: {results} holds studies of preset study-small at budget 150, not "
        "study-small at 240: pass those, another --results file, or --fresh to replace it"]
    assert results.read_text() == committed
