"""Benchmark the tuners on the synthetic suite: equal budgets, several seeds.

``main`` is what ``memotune bench tuners`` calls; ``benchmarks/bench_tuners.py``
is a thin argparse wrapper around it.  Jobs (pipeline, tuner, seed) run in a
process pool (``workers``, default 2) with one torch thread each.

The multi-fidelity benchmark (``mf_main``, ``benchmarks/bench_mf.py``) is at the
end: the learning-curve pipelines, the multi-fidelity tuners of ``tuners.mf``
against stage-level EEIPU and EI at one cost budget.

Reported per pipeline and tuner (medians over seeds): evaluations within
budget, best objective, improvement after warm-up (best at the end minus best
after the warm-up evaluations: every tuner shares the same warm-up design for
a given seed, so this is a like-for-like gain), seconds per ask (model-based
asks only), and the fraction of post-warm-up runs that hit the cache.  Then
EEIPU's ratios to each baseline, and a separate ask-overhead measurement at
100 observations on a 3-stage, 8-parameter space.
"""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "ALL_TUNERS",
    "run_benchmark",
    "print_report",
    "measure_ask_time",
    "main",
    "MF_BENCH_TUNERS",
    "MF_PIPELINES",
    "run_mf_benchmark",
    "summarize_mf",
    "print_mf_report",
    "mf_main",
    "mf_render",
]

ALL_TUNERS = ["eeipu", "ei", "eips", "carbo", "ms_carbo", "random", "tpe"]
_COST_ORDER = {"eeipu": 0, "ms_carbo": 1, "carbo": 2, "eips": 3, "ei": 4, "tpe": 5, "random": 6}


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (pipeline, tuner, seed) simulation; runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    from tuners import make_tuner, simulate
    from tuners.synthetic import synthetic_suite

    pipe = synthetic_suite([job["pipeline"]])[job["pipeline"]]
    tuner = make_tuner(
        job["tuner"], pipe.space, budget=job["budget"], seed=job["seed"], warmup=job["warmup"],
        **job.get("kwargs", {}),
    )
    t0 = time.perf_counter()
    trace = simulate(tuner, pipe, budget=job["budget"], seed=job["seed"])
    asks = trace.ask_seconds
    return {
        "pipeline": job["pipeline"],
        "tuner": job["tuner"],
        "seed": job["seed"],
        "n_evaluations": trace.n_evaluations,
        "best": trace.best_objective,
        "best_after_warmup": trace.best_after_warmup,
        "improvement": trace.improvement,
        "spent": trace.spent,
        "ask_s_median": statistics.median(asks) if asks else 0.0,
        "ask_s_max": max(asks) if asks else 0.0,
        "reuse_fraction": trace.reuse_fraction,
        "wall_s": time.perf_counter() - t0,
    }


def run_benchmark(
    tuner_names: Sequence[str],
    pipelines: Sequence[str],
    seeds: int | Sequence[int],
    budget: float,
    progress: bool = True,
    *,
    workers: int = 2,
    warmup: int = 10,
    tuner_kwargs: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Simulate every (pipeline, tuner, seed); returns ``{"rows": [...], ...settings}``.

    ``seeds``: a count (seeds ``0..n-1``) or explicit seeds.  ``tuner_kwargs``:
    per-tuner constructor overrides.
    """
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    t0 = time.perf_counter()
    rows = _run_jobs(_run_job, pipelines, tuner_names, seed_list, budget, warmup,
                     lambda t: (tuner_kwargs or {}).get(t, {}), _COST_ORDER, workers, progress)
    return {
        "rows": rows,
        "tuners": list(tuner_names),
        "pipelines": list(pipelines),
        "seeds": seed_list,
        "budget": float(budget),
        "warmup": warmup,
        "wall_s": time.perf_counter() - t0,
    }


def _run_jobs(run: Callable[[dict[str, Any]], dict[str, Any]], pipelines: Sequence[str],
              tuner_names: Sequence[str], seeds: Sequence[int], budget: float, warmup: int,
              kwargs_of: Callable[[str], dict[str, Any]], cost_order: dict[str, int],
              workers: int, progress: bool) -> list[dict[str, Any]]:
    """Every (pipeline, tuner, seed) job through ``run``, on ``workers`` spawned processes
    (slow tuners first: better packing); rows sorted by pipeline, tuner, seed."""
    jobs = [
        {"pipeline": p, "tuner": t, "seed": s, "budget": float(budget), "warmup": warmup,
         "kwargs": kwargs_of(t)}
        for p in pipelines
        for t in tuner_names
        for s in seeds
    ]
    jobs.sort(key=lambda j: cost_order.get(j["tuner"], 0))
    if workers <= 1:
        rows = _collect(map(run, jobs), len(jobs), progress)
    else:
        ctx = mp.get_context("spawn")
        with ctx.Pool(workers) as pool:
            rows = _collect(pool.imap_unordered(run, jobs), len(jobs), progress)
    rows.sort(key=lambda r: (r["pipeline"], r["tuner"], r["seed"]))
    return rows


def _collect(it: Any, total: int, progress: bool) -> list[dict[str, Any]]:
    if not progress:  # plain log lines (nohup-friendly)
        rows = []
        for row in it:
            rows.append(row)
            print(
                f"[{len(rows)}/{total}] {row['pipeline']} {row['tuner']} seed {row['seed']}: "
                f"{row['n_evaluations']} evals, best {row['best']:.3f}, "
                f"impr {row['improvement']:.3f}, ask {row['ask_s_median']:.2f} s, "
                f"wall {row['wall_s']:.0f} s",
                flush=True,
            )
        return rows
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    rows = []
    with Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()
    ) as bar:
        task = bar.add_task("simulating", total=total)
        for row in it:
            rows.append(row)
            bar.update(task, advance=1, description=f"{row['pipeline']} {row['tuner']} s{row['seed']}")
    return rows


def summarize(results: dict[str, Any]) -> dict[str, dict[str, dict[str, float]]]:
    """Medians over seeds: ``{pipeline: {tuner: {metric: median}}}``."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in results["pipelines"]:
        out[p] = {}
        for t in results["tuners"]:
            rs = [r for r in results["rows"] if r["pipeline"] == p and r["tuner"] == t]
            if not rs:
                continue
            out[p][t] = {
                k: statistics.median(r[k] for r in rs)
                for k in ("n_evaluations", "best", "improvement", "ask_s_median", "reuse_fraction")
            }
    return out


def _ratio(a: float, b: float) -> float:
    if b > 0:
        return a / b
    return math.inf if a > 0 else math.nan


def _fmt_ratio(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return "inf" if math.isinf(x) else f"{x:.2f}x"


def print_report(results: dict[str, Any], console: Any = None) -> None:
    """Rich tables: per-pipeline medians, EEIPU ratios, target check."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    med = summarize(results)
    console.print(
        f"budget {results['budget']:g}, warm-up {results['warmup']}, seeds {results['seeds']}, "
        f"medians over seeds; wall {results['wall_s']:.0f} s"
    )
    for p, per in med.items():
        table = Table(title=f"pipeline {p}")
        for col in ("tuner", "evals", "best", "improvement", "ask s", "cache reuse"):
            table.add_column(col, justify="left" if col == "tuner" else "right")
        for t, m in per.items():
            table.add_row(
                t, f"{m['n_evaluations']:.1f}", f"{m['best']:.3f}", f"{m['improvement']:.3f}",
                f"{m['ask_s_median']:.2f}", f"{100 * m['reuse_fraction']:.0f}%",
            )
        console.print(table)
    baselines = [t for t in results["tuners"] if t != "eeipu"]
    if "eeipu" not in results["tuners"] or not baselines:
        return
    ratios = Table(title="EEIPU / baseline (medians): evaluations | improvement after warm-up")
    ratios.add_column("pipeline")
    for b in baselines:
        ratios.add_column(b, justify="right")
    evals_r: dict[str, list[float]] = {b: [] for b in baselines}
    wins: dict[str, int] = {b: 0 for b in baselines}
    for p, per in med.items():
        e = per.get("eeipu")
        if e is None:
            continue
        cells = []
        for b in baselines:
            m = per.get(b)
            if m is None:
                cells.append("-")
                continue
            er = _ratio(e["n_evaluations"], m["n_evaluations"])
            ir = _ratio(e["improvement"], m["improvement"])
            evals_r[b].append(er)
            wins[b] += e["improvement"] > m["improvement"]
            cells.append(f"{_fmt_ratio(er)} | {_fmt_ratio(ir)}")
        ratios.add_row(p, *cells)
    n_p = len(med)
    geo = [
        math.exp(statistics.fmean(math.log(x) for x in evals_r[b])) if evals_r[b] else math.nan
        for b in baselines
    ]
    ratios.add_row("geo-mean evals", *[_fmt_ratio(g) for g in geo], style="bold")
    ratios.add_row("EEIPU impr. wins", *[f"{wins[b]}/{n_p}" for b in baselines], style="bold")
    console.print(ratios)
    checks = []
    for b, need in (("ei", 2.0), ("carbo", 1.3)):
        if b in baselines:
            g = geo[baselines.index(b)]
            per_p = sum(x >= need for x in evals_r[b])
            checks.append(
                f"evals vs {b}: geo-mean {_fmt_ratio(g)} (target >= {need}x), "
                f">= target on {per_p}/{len(evals_r[b])} pipelines"
            )
    checks.append(
        "improvement: EEIPU beats "
        + ", ".join(f"{b} on {wins[b]}/{n_p}" for b in baselines)
        + " pipelines (target: most)"
    )
    for c in checks:
        console.print(c)


def measure_ask_time(n_obs: int = 100, n_asks: int = 10, seed: int = 0) -> dict[str, float]:
    """Seconds per EEIPU ask at ``n_obs`` observations, 3 stages / 8 params, all prefixes cached.

    The tuner is told ``n_obs`` observations of random configurations (the
    hardest case for the cost models: no structure from earlier BO picks),
    every prefix of them is in the cache view, ``eta = 1``.  One untimed ask
    pays the process's one-off costs (lazy imports); then ``n_asks`` asks are
    timed: they include one full refit from default initialization (every
    ``full_refit_every`` = 10 asks) and warm-started refits otherwise.
    """
    import torch

    from tuners import make_tuner, simulate
    from tuners.base import CachedPrefix, CacheView, Candidate
    from tuners.synthetic import synthetic_suite

    torch.set_num_threads(1)
    pipe = synthetic_suite(["hart3_branin_levy3"])["hart3_branin_levy3"]
    src = make_tuner("random", pipe.space, budget=1e12, seed=seed)
    simulate(src, pipe, budget=1e12, seed=seed, max_evaluations=n_obs)
    tuner = make_tuner("eeipu", pipe.space, budget=1e12, seed=seed, warmup=0)
    for o in src.observations:
        tuner.tell(Candidate(params=o.params, id=o.id), o.objective, o.stage_costs, o.cached)
    prefixes = {}
    for o in tuner.observations:
        for d in range(1, pipe.space.n_stages):
            cp = CachedPrefix(tuple(o.params[:d]), (pipe.load_cost,) * d)
            prefixes[cp.key()] = cp
    view = CacheView(list(prefixes.values()))
    times = []
    for i in range(n_asks + 1):
        t0 = time.perf_counter()
        cand = tuner.ask(view)
        if i:
            times.append(time.perf_counter() - t0)
        tuner.pending.pop(cand.id)  # keep the observation count fixed
    return {
        "n_obs": n_obs,
        "median_s": statistics.median(times),
        "max_s": max(times),
        "pool_prefixes": float(len(tuner._prefix_pool(view))),
    }


def main(
    seeds: int = 5,
    budget: float = 8000.0,
    tuners: list[str] | None = None,
    pipelines: list[str] | None = None,
    *,
    workers: int = 2,
    out: str | None = None,
    progress: bool = True,
) -> int:
    """Run the benchmark, print the report and the ask-overhead measurement; 0 on success."""
    from rich.console import Console

    from tuners.synthetic import suite_names

    console = Console()
    tuners = tuners or list(ALL_TUNERS)
    pipelines = pipelines or suite_names()
    results = run_benchmark(tuners, pipelines, seeds, budget, progress, workers=workers)
    print_report(results, console)
    ask = measure_ask_time()
    results["ask_time"] = ask
    console.print(
        f"EEIPU ask at {ask['n_obs']:.0f} observations (3 stages, 8 params, "
        f"{ask['pool_prefixes']:.0f} prefixes in the pool, 1 torch thread): "
        f"median {ask['median_s']:.2f} s, max {ask['max_s']:.2f} s (target < 2 s)"
    )
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
        console.print(f"raw results written to {out}")
    return 0


# ---------------------------------------------------------------------- multi-fidelity benchmark
MF_BENCH_TUNERS = ["eeipu-mf", "asha", "tpe-hyperband", "one-epoch-topk", "eeipu", "ei"]
_MF_COST_ORDER = {"eeipu-mf": 0, "eeipu": 1, "ei": 2, "tpe-hyperband": 3, "asha": 4, "one-epoch-topk": 5}
# One set of BO settings for every GP tuner in the multi-fidelity benchmark (eeipu-mf, eeipu,
# ei alike), lighter than the defaults so 5 seeds x 6 tuners x 3 pipelines fit 10 min on 2 cores.
MF_BO_KWARGS: dict[str, Any] = {
    "raw_samples": 128,
    "num_restarts": 2,
    "n_optimize": 1,
    "n_mc": 128,
    "n_mc_screen": 32,
    "maxiter": 20,
    "fit_maxiter": 10,
    "full_refit_every": 20,
}
MF_PIPELINES = ["lc_prep_train_eval", "lc_train_eval", "lc_four_stage"]


def _run_mf_job(job: dict[str, Any]) -> dict[str, Any]:
    """One (learning-curve pipeline, tuner, seed) simulation; runs in a worker process."""
    import torch

    torch.set_num_threads(1)
    from tuners.mf import MF_TUNERS, make_mf_tuner
    from tuners.simulate import simulate
    from tuners.synthetic import lc_suite

    pipe = lc_suite([job["pipeline"]])[job["pipeline"]]
    kwargs = dict(job.get("kwargs", {}))
    if job["tuner"] in MF_TUNERS:
        kwargs.update(pipe.fidelity_kwargs())
    tuner = make_mf_tuner(
        job["tuner"], pipe.space, budget=job["budget"], seed=job["seed"], warmup=job["warmup"], **kwargs
    )
    t0 = time.perf_counter()
    trace = simulate(tuner, pipe, budget=job["budget"], seed=job["seed"])
    asks = [h["ask_s"] for h in trace.history if h["source"] not in ("warmup", "promote")]
    curve, last = [], -math.inf
    for h in trace.history:  # best-so-far steps only
        if h["best"] > last:
            curve.append([h["spent"], h["best"]])
            last = h["best"]
    return {
        "pipeline": job["pipeline"],
        "tuner": job["tuner"],
        "seed": job["seed"],
        "n_evaluations": trace.n_evaluations,
        "n_trials": trace.n_trials,
        "n_full": trace.n_full,
        "best": trace.best_objective,
        "best_full": trace.best_full,
        "improvement": trace.improvement,
        "spent": trace.spent,
        "curve": curve,
        "reuse_fraction": trace.reuse_fraction,
        "ask_s_median": statistics.median(asks) if asks else 0.0,
        "wall_s": time.perf_counter() - t0,
    }


def estimate_optimum(pipeline_name: str, n: int = 4096, seed: int = 0) -> float:
    """Approximate max objective at full epochs of a learning-curve pipeline.

    Stages are additively separable; every test-function stage peaks at 0, so
    only the training stage's ``curve(x, max_epochs)`` needs a search: ``n``
    random configurations, then Nelder-Mead on the unit cube from the best 4.
    """
    import numpy as np
    from scipy.optimize import minimize

    from tuners.synthetic import lc_suite

    pipe = lc_suite([pipeline_name])[pipeline_name]
    t, big_e = pipe.train_stage, pipe.max_epochs
    stage = pipe.stages[t]  # type: ignore[index]
    space = pipe.space

    def f(u: Any) -> float:
        u = np.clip(u, 0.0, 1.0)
        return float(stage.objective_at(space.stage_from_unit(t, list(u)), big_e))  # type: ignore[attr-defined]

    rng = np.random.default_rng(seed)
    width = space.stage_slices[t].stop - space.stage_slices[t].start  # type: ignore[union-attr]
    U = rng.random((n, width))
    vals = np.array([f(u) for u in U])
    best = float(vals.max())
    for i in np.argsort(-vals)[:4]:
        res = minimize(lambda u: -f(u), U[i], method="Nelder-Mead", options={"maxfev": 400})
        best = max(best, -float(res.fun))
    return best


def run_mf_benchmark(
    tuner_names: Sequence[str],
    pipelines: Sequence[str],
    seeds: int | Sequence[int],
    budget: float,
    progress: bool = True,
    *,
    workers: int = 2,
    warmup: int = 10,
    bo_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Simulate every (learning-curve pipeline, tuner, seed) at one cost budget."""
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    bo = dict(MF_BO_KWARGS if bo_kwargs is None else bo_kwargs)
    t0 = time.perf_counter()
    bo_tuners = ("eeipu-mf", "eeipu", "ei", "eips", "carbo", "ms_carbo")
    rows = _run_jobs(_run_mf_job, pipelines, tuner_names, seed_list, budget, warmup,
                     lambda t: bo if t in bo_tuners else {}, _MF_COST_ORDER, workers, progress)
    optima = {p: estimate_optimum(p) for p in pipelines}
    for p in pipelines:  # the estimate is a lower bound: never below what a run found
        optima[p] = max([optima[p], *(r["best"] for r in rows if r["pipeline"] == p)])
    return {
        "rows": rows,
        "tuners": list(tuner_names),
        "pipelines": list(pipelines),
        "seeds": seed_list,
        "budget": float(budget),
        "warmup": warmup,
        "bo_kwargs": bo,
        "optima": optima,
        "wall_s": time.perf_counter() - t0,
    }


def _reach_fraction(row: dict[str, Any], target: float, budget: float) -> float:
    """Budget fraction at which ``row``'s best-so-far first reaches ``target`` (inf: never)."""
    from tuners.simulate import first_reach

    at = first_reach(row["curve"], target)
    return math.inf if at is None else at / budget


def summarize_mf(results: dict[str, Any], reference: str = "eeipu") -> dict[str, dict[str, dict[str, float]]]:
    """Medians over seeds per pipeline and tuner, plus the budget fraction to reach ``reference``'s best."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for p in results["pipelines"]:
        out[p] = {}
        ref = {r["seed"]: r["best"] for r in results["rows"] if r["pipeline"] == p and r["tuner"] == reference}
        for t in results["tuners"]:
            rs = [r for r in results["rows"] if r["pipeline"] == p and r["tuner"] == t]
            if not rs:
                continue
            m = {
                k: statistics.median(r[k] for r in rs)
                for k in ("best", "best_full", "n_evaluations", "n_trials", "n_full", "ask_s_median")
            }
            m["regret"] = statistics.median(results["optima"][p] - r["best"] for r in rs)
            fr = [_reach_fraction(r, ref[r["seed"]], results["budget"]) for r in rs if r["seed"] in ref]
            m["reach"] = statistics.median(fr) if fr else math.nan
            m["reached"] = sum(math.isfinite(x) for x in fr)
            m["n_seeds"] = len(rs)
            out[p][t] = m
    return out


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(header))) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def print_mf_report(results: dict[str, Any], console: Any = None, focus: str = "eeipu-mf") -> str:
    """Rich tables per pipeline and the ``focus`` ratios; returns the same report as Markdown."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    med = summarize_mf(results)
    head = (
        f"budget {results['budget']:g} per run, warm-up {results['warmup']} trials, seeds "
        f"{results['seeds']}, medians over seeds; wall {results['wall_s']:.0f} s"
    )
    console.print(head)
    md = [head, ""]
    cols = ["tuner", "best", "regret", "best@full", "trials completed", "configs", "full-epoch runs",
            "budget to reach eeipu's best", "ask s"]
    for p, per in med.items():
        table = Table(title=f"pipeline {p} (estimated optimum {results['optima'][p]:.3f})")
        for c in cols:
            table.add_column(c, justify="left" if c == "tuner" else "right")
        rows = []
        for t, m in per.items():
            reach = "never" if math.isinf(m["reach"]) else f"{m['reach']:.2f}"
            cells = [
                t, f"{m['best']:.3f}", f"{m['regret']:.3f}", f"{m['best_full']:.3f}",
                f"{m['n_evaluations']:.0f}", f"{m['n_trials']:.0f}", f"{m['n_full']:.0f}",
                f"{reach} ({m['reached']}/{m['n_seeds']})", f"{m['ask_s_median']:.2f}",
            ]
            table.add_row(*cells)
            rows.append(cells)
        console.print(table)
        md += [f"### {p} (estimated optimum {results['optima'][p]:.3f})", "", _md_table(cols, rows), ""]
    baselines = [t for t in results["tuners"] if t != focus]
    if focus not in results["tuners"] or not baselines:
        return "\n".join(md)
    title = f"{focus} vs baseline: regret ratio (baseline / {focus}, > 1: {focus} better), trials ratio"
    ratios = Table(title=title)
    ratios.add_column("pipeline")
    for b in baselines:
        ratios.add_column(b, justify="right")
    wins = {b: 0 for b in baselines}
    rrows = []
    for p, per in med.items():
        e = per.get(focus)
        if e is None:
            continue
        cells = [p]
        for b in baselines:
            m = per.get(b)
            if m is None:
                cells.append("-")
                continue
            wins[b] += e["best"] > m["best"]
            cells.append(
                f"{_fmt_ratio(_ratio(m['regret'], e['regret']))}, "
                f"{_fmt_ratio(_ratio(e['n_evaluations'], m['n_evaluations']))}"
            )
        ratios.add_row(*cells)
        rrows.append(cells)
    n_p = len(med)
    win_row = [f"{focus} wins (median best)", *[f"{wins[b]}/{n_p}" for b in baselines]]
    ratios.add_row(*win_row, style="bold")
    rrows.append(win_row)
    console.print(ratios)
    md += [f"### {title}", "", _md_table(["pipeline", *baselines], rrows), ""]
    target = [b for b in ("asha", "tpe-hyperband", "eeipu") if b in baselines]
    check = (
        f"target (issue): {focus} beats " + ", ".join(f"{b} on {wins[b]}/{n_p}" for b in target)
        + " pipelines on median best objective at equal budget (target: most)"
    )
    console.print(check)
    md += [check, ""]
    return "\n".join(md)


def mf_main(
    seeds: int = 5,
    budget: float = 4000.0,
    tuners: list[str] | None = None,
    pipelines: list[str] | None = None,
    *,
    workers: int = 2,
    out: str | None = None,
    markdown: str | None = None,
    progress: bool = True,
    argv: str = "",
) -> int:
    """Run the multi-fidelity benchmark, print the tables; write JSON/Markdown if asked.

    ``argv``: the command line, recorded in the JSON so a re-render can cite it.
    """

    t0 = time.perf_counter()
    results = run_mf_benchmark(
        tuners or list(MF_BENCH_TUNERS), pipelines or list(MF_PIPELINES), seeds, budget, progress,
        workers=workers,
    )
    results["total_wall_s"] = time.perf_counter() - t0
    results["workers"] = workers
    results["argv"] = argv
    if out:
        with open(out, "w") as f:
            json.dump(results, f, indent=1)
    mf_render(results, markdown)
    if out:
        print(f"raw results written to {out}")
    return 0


def mf_render(results: dict[str, Any], markdown: str | None = None) -> str:
    """Print the report of ``run_mf_benchmark`` results (fresh or loaded from JSON); write Markdown."""
    from rich.console import Console

    console = Console(width=max(Console().width, 150))
    report = print_mf_report(results, console)
    tail = f"total wall time {results.get('total_wall_s', results['wall_s']):.0f} s ({results.get('workers', 2)} workers)"
    console.print(tail)
    report += "\n" + tail + "\n"
    if markdown:
        with open(markdown, "w") as f:
            f.write(report)
        console.print(f"report written to {markdown}")
    return report
