"""The synthetic benchmarks' job runner: every (pipeline, tuner, seed) once, rows in order."""

from __future__ import annotations

from tuners.bench import run_benchmark, run_mf_benchmark


def test_the_stage_level_benchmark_runs_every_job_once_in_order():
    out = run_benchmark(["random", "tpe"], ["branin_hart3"], 2, budget=3000.0, progress=False,
                        workers=1, warmup=3)
    keys = [(r["pipeline"], r["tuner"], r["seed"]) for r in out["rows"]]
    assert keys == [("branin_hart3", t, s) for t in ("random", "tpe") for s in (0, 1)]
    assert all(r["n_evaluations"] >= 3 and r["spent"] <= 3000.0 + 1e-9 for r in out["rows"])


def test_the_multi_fidelity_benchmark_runs_every_job_once_and_bounds_the_optimum():
    out = run_mf_benchmark(["asha", "random"], ["lc_train_eval"], [3], budget=300.0,
                           progress=False, workers=1, warmup=3)
    assert [(r["tuner"], r["seed"]) for r in out["rows"]] == [("asha", 3), ("random", 3)]
    assert out["optima"]["lc_train_eval"] >= max(r["best"] for r in out["rows"])
