"""Studies on the real pipeline: every tuner, the same stage-seconds budget.

Each (tuner, seed) runs one study of a preset (default `study-small`: the
offline default made small, a full run takes tens of seconds on 2 cores;
`study-target`: the same with a 4x larger target set, so the target stage is
most of a cached trial's cost; examples/study-*.yaml are the same pipelines;
search space: intermediate and target lr and epochs, the target's optimizer
mode) with the same budget of stage seconds (compute + cache loads, what `tune` charges), on
a fresh store of its own. Per tuner (medians over seeds): trials completed,
best objective, best so far at 25/50/100% of the budget, seconds saved by
reuse; then EEIPU's ratios against each baseline.

Resumable: finished studies are kept in the results file, and a study killed
mid-way continues from its store (`tune --resume`) on the next invocation.

    python benchmarks/bench_study.py --seeds 3 --budget 150 [--tuners eeipu ei random ...]
    python benchmarks/bench_study.py --preset study-target --seeds 3 --budget 200 \
        --tuners eeipu ei random eeipu-mf asha tpe-hyperband one-epoch-topk \
        --results benchmarks/RESULTS_study_heavy_target.json

`tuner@stage` runs a multi-fidelity tuner with `--fidelity stage`: the default
list has rungs over the intermediate stage's epochs (`eeipu-mf@intermediate_finetune`);
`eeipu-mf` alone has them over the target stage's (the last tuned stage).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.presets import PRESETS  # noqa: E402
from tuners.simulate import first_reach  # noqa: E402

RESULTS = ROOT / "benchmarks" / "RESULTS_study.json"
# a trial in the results file: one row of these (compact: the file is committed)
TRIAL_FIELDS = ("id", "objective", "spent", "saved_s", "reused", "rung", "epochs")
WORK = ROOT / "benchmarks" / ".work" / "study"
FRACTIONS = (0.25, 0.5, 1.0)
# stage-level tuners, then the multi-fidelity ones with rungs over the intermediate stage's
# epochs (the costly stage; `eeipu-mf` alone: rungs over the target's, the last tuned stage)
MF_FIDELITY = "intermediate_finetune"
TUNERS = ("eeipu", "ei", "random",
          *(f"{t}@{MF_FIDELITY}" for t in ("eeipu-mf", "asha", "tpe-hyperband", "one-epoch-topk")))


def best_at(trials: list[dict[str, Any]], budget: float, fraction: float) -> float | None:
    """Best objective among the trials finished within fraction x budget."""
    done = [t["objective"] for t in trials
            if t["objective"] is not None and t["spent"] <= fraction * budget + 1e-9]
    return max(done) if done else None


def run_study(tuner: str, seed: int, budget: float, preset: str, warmup: int) -> dict[str, Any]:
    from flows.config import load_config
    from flows.tune import tune_flow

    folder = WORK / f"{preset}-{tuner}-{seed}-{budget:g}"
    store = folder / "store"
    resume = (store / "studies" / "bench" / "study.json").exists()
    cfg = load_config(doc=PRESETS[preset]).model_dump(mode="json")
    name, _, fidelity = tuner.partition("@")  # tuner@stage: --fidelity stage
    t0 = time.perf_counter()
    result = tune_flow(str(store), "bench", config=None if resume else cfg, tuner=name,
                       budget=budget, warmup=warmup, seed=seed, progress=False,
                       resume=resume, lock_dir=str(folder / "locks"),
                       fidelity=None if resume else (fidelity or None))
    trials = [{"id": t["id"], "objective": t["objective"], "spent": t["spent"],
               "saved_s": sum(s["saved_s"] for s in t["stages"]),
               "reused": sum(s["status"] == "cached" for s in t["stages"]),
               "rung": t.get("rung"), "epochs": t.get("epochs")}
              for t in result["trials"]]
    return {"tuner": tuner, "seed": seed, "budget": budget, "spent": result["spent"],
            "wall_s": time.perf_counter() - t0, "trials": trials}


def save_results(results: dict[str, Any], path: Path = RESULTS) -> None:
    """The results file: one line per study, its trials as rows of TRIAL_FIELDS."""
    def rnd(v: Any) -> Any:
        return round(v, 6) if isinstance(v, float) else v

    runs = [
        json.dumps(name) + ": " + json.dumps({
            **{k: rnd(v) for k, v in run.items() if k != "trials"},
            "trials": [[rnd(t.get(f)) for f in TRIAL_FIELDS] for t in run["trials"]]})
        for name, run in results["runs"].items()]
    head = {k: v for k, v in results.items() if k not in ("runs", "summary")}
    lines = [f" {json.dumps(k)}: {json.dumps(v)}," for k, v in head.items()]
    lines.append(' "runs": {\n  ' + ",\n  ".join(runs) + "\n }")
    if "summary" in results:
        lines[-1] += ","
        lines.append(f' "summary": {json.dumps(results["summary"])}')
    path.write_text("{\n" + "\n".join(lines) + "\n}\n")


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    """The results file back, each trial a dict (older files: dicts already)."""
    results = json.loads(path.read_text())
    for run in results["runs"].values():
        run["trials"] = [dict(zip(TRIAL_FIELDS, t, strict=True)) if isinstance(t, list) else t
                         for t in run["trials"]]
    return results


def _median(xs: list[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def table(results: dict[str, Any], tuners: list[str], console: Console) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for tuner in tuners:
        runs = [r for r in results["runs"].values() if r["tuner"] == tuner]
        if not runs:
            continue
        rows[tuner] = {
            "seeds": len(runs),
            "trials": _median([len(r["trials"]) for r in runs]),
            **{f"best@{f:g}": _median([best_at(r["trials"], r["budget"], f) for r in runs])
               for f in FRACTIONS},
            "saved_s": _median([sum(t["saved_s"] for t in r["trials"]) for r in runs]),
        }
    t = Table(title=f"real-pipeline studies ({results['preset']}, budget "
                    f"{results['budget']:g} stage s; medians over seeds)")
    for col in ("tuner", "seeds", "trials", "best @25%", "best @50%", "best @100%",
                "saved by reuse s"):
        t.add_column(col, justify="left" if col == "tuner" else "right")

    def f(x: float | None, spec: str = ".4f") -> str:
        return "-" if x is None else format(x, spec)

    for tuner, r in rows.items():
        t.add_row(tuner, str(r["seeds"]), f(r["trials"], ".1f"), f(r["best@0.25"]),
                  f(r["best@0.5"]), f(r["best@1"]), f(r["saved_s"], ".0f"))
    console.print(t)
    if "eeipu" in rows:
        ratios = Table(title="EEIPU against each baseline (same budget, same cache)")
        for col in ("baseline", "trials ratio", "best objective difference"):
            ratios.add_column(col, justify="left" if col == "baseline" else "right")
        e = rows["eeipu"]
        for tuner, r in rows.items():
            if tuner == "eeipu" or not r["trials"] or e["best@1"] is None or r["best@1"] is None:
                continue
            ratios.add_row(tuner, f"{e['trials'] / r['trials']:.2f}x",
                           f"{e['best@1'] - r['best@1']:+.4f}")
        console.print(ratios)
    rows.update(_against_eeipu(results, [x for x in rows if x != "eeipu"], console))
    return rows


def _against_eeipu(results: dict[str, Any], tuners: list[str], console: Console) -> dict[str, dict]:
    """Per tuner, seed by seed against stage-level EEIPU's study of the same seed: the
    budget fraction spent when it first reached EEIPU's final best, and its trials ratio
    (the issue's targets for eeipu-mf: within half the budget, at least 2x trials)."""
    out: dict[str, dict] = {}
    t = Table(title="against stage-level EEIPU, seed by seed (medians; a seed that never reached it counts as past the budget)")
    for col in ("tuner", "seeds", "reached EEIPU's best", "budget fraction to reach it",
                "trials ratio"):
        t.add_column(col, justify="left" if col == "tuner" else "right")
    runs = results["runs"]
    for tuner in tuners:
        fractions: list[float | None] = []
        trial_ratios: list[float] = []
        for r in runs.values():
            base = runs.get(f"eeipu/{r['seed']}")
            if r["tuner"] != tuner or base is None:
                continue
            target = max(x["objective"] for x in base["trials"] if x["objective"] is not None)
            at = first_reach(((x["spent"], x["objective"]) for x in r["trials"]), target)
            fractions.append(None if at is None else at / r["budget"])
            trial_ratios.append(len(r["trials"]) / len(base["trials"]))
        if not fractions:
            continue
        reached = [x for x in fractions if x is not None]
        # a never-reached seed counts as past the budget, so the median is an honest one
        med = statistics.median([x if x is not None else math.inf for x in fractions])
        out[tuner] = {"vs_eeipu_fraction": None if math.isinf(med) else med,
                      "vs_eeipu_reached": len(reached), "vs_eeipu_trials": _median(trial_ratios)}
        t.add_row(tuner, str(len(fractions)), f"{len(reached)}/{len(fractions)}",
                  "never" if math.isinf(med) else f"{med:.2f}",
                  f"{statistics.median(trial_ratios):.2f}x")
    console.print(t)
    return {f"{k} vs eeipu": v for k, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=150.0, help="stage seconds per study")
    ap.add_argument("--tuners", nargs="+", default=list(TUNERS))
    ap.add_argument("--preset", default="study-small", choices=sorted(PRESETS))
    ap.add_argument("--warmup", type=int, default=3, help="random trials before BO")
    ap.add_argument("--fresh", action="store_true", help="forget earlier results")
    ap.add_argument("--results", type=Path, default=RESULTS, help="the results file")
    args = ap.parse_args()
    console = Console()
    results: dict[str, Any] = {"preset": args.preset, "budget": args.budget, "runs": {}}
    if args.results.exists() and not args.fresh:
        old = load_results(args.results)
        if (old.get("preset"), old.get("budget")) != (args.preset, args.budget):
            sys.exit(f"error: {args.results} holds studies of preset {old.get('preset')} at "
                     f"budget {old.get('budget'):g}, not {args.preset} at {args.budget:g}: "
                     "pass those, another --results file, or --fresh to replace it")
        results = old
    from flows.server import ensure_server

    ensure_server()
    if args.fresh:
        shutil.rmtree(WORK, ignore_errors=True)
    for seed in range(args.seeds):
        for tuner in args.tuners:
            name = f"{tuner}/{seed}"
            if name in results["runs"]:
                continue
            console.print(f"[bold]{name}[/]: study of {args.budget:g} stage seconds ...")
            results["runs"][name] = run_study(tuner, seed, args.budget, args.preset, args.warmup)
            save_results(results, args.results)  # after every study
    results["summary"] = table(results, args.tuners, console)
    save_results(results, args.results)
    console.print(f"written to {args.results}")


if __name__ == "__main__":
    main()
