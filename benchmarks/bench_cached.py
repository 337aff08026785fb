"""What a cache hit costs: memotune's orchestration against Prefect's own floor.

Two tables, each against a baseline measured in the same process / the same run:

1. In-process, per cached stage: a fully cached pipeline flow (the TINY config,
   4 stages, a local store) against a flow of 4 trivial Prefect tasks whose
   results are cached by Prefect itself (the floor of a Prefect cache hit).
2. The command line: a fully cached `memotune run` (the TINY config) against a
   bare `python -c "import prefect"`, alternated, median of --repeats.

    python benchmarks/bench_cached.py [--repeats 5] [--out benchmarks/RESULTS_cached.json]

Uses the Prefect API of the environment, or starts a local one as the CLI does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.flows.conftest import TINY  # noqa: E402

MEMOTUNE = str(Path(sys.executable).parent / "memotune")


def _floor_flow():
    """4 tasks cached by Prefect's own policy: what a cache hit costs in Prefect alone."""
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    @task(cache_policy=INPUTS, persist_result=True, result_serializer="json")
    def stage(i: int) -> dict:
        return {"i": i}

    @flow(name="bench-prefect-floor")
    def four() -> list[dict]:
        return [stage(i) for i in range(4)]

    return four


def in_process(store: str, repeats: int) -> dict[str, float]:
    from flows.config import load_config
    from flows.pipeline import pipeline_flow

    doc = load_config(doc=TINY).model_dump(mode="json")
    pipeline_flow(doc, store, progress=False)  # computes (or finds) every stage
    floor = _floor_flow()
    floor()
    ours, theirs = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        summary = pipeline_flow(doc, store, progress=False)
        ours.append(time.perf_counter() - t0)
        assert all(s["status"] == "cached" for s in summary["stages"]), summary["stages"]
        t0 = time.perf_counter()
        floor()
        theirs.append(time.perf_counter() - t0)
    return {"flow_s": statistics.median(ours), "floor_flow_s": statistics.median(theirs)}


def _wall(cmd: list[str], env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, capture_output=True)
    return time.perf_counter() - t0


def command_line(config: str, store: str, repeats: int) -> dict[str, float]:
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    run = [MEMOTUNE, "run", config, "--store", store, "--json"]
    subprocess.run(run, env=env, check=True, capture_output=True)  # fill the cache
    ours, bare = [], []
    for _ in range(repeats):
        ours.append(_wall(run, env))
        bare.append(_wall([sys.executable, "-c", "import prefect"], env))
    return {"cli_s": statistics.median(ours), "import_prefect_s": statistics.median(bare)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_cached.json"))
    args = ap.parse_args()
    console = Console()
    from flows.server import ensure_server

    ensure_server()
    with tempfile.TemporaryDirectory(prefix="bench-cached-") as tmp:
        config = Path(tmp) / "tiny.yaml"
        config.write_text(yaml.safe_dump(TINY))
        cli = command_line(str(config), str(Path(tmp) / "cli-store"), args.repeats)
        inproc = in_process(str(Path(tmp) / "flow-store"), args.repeats)

    per_stage = (inproc["flow_s"] - inproc["floor_flow_s"]) / 4
    t = Table(title="A cached stage in-process (TINY config, 4 stages, local store)")
    for col in ("measure", "seconds", "ratio"):
        t.add_column(col, justify="right" if col != "measure" else "left")
    t.add_row("Prefect floor: flow of 4 Prefect-cached tasks", f"{inproc['floor_flow_s']:.3f}", "1.00x")
    t.add_row("memotune: fully cached pipeline flow", f"{inproc['flow_s']:.3f}",
              f"{inproc['flow_s'] / inproc['floor_flow_s']:.2f}x")
    t.add_row("memotune orchestration per cached stage, above the floor",
              f"{per_stage * 1000:.0f} ms", "target <= 50 ms")
    console.print(t)
    t = Table(title="A fully cached `memotune run` (TINY config) vs a bare Prefect import")
    for col in ("command", "seconds (median)", "ratio"):
        t.add_column(col, justify="right" if col != "command" else "left")
    t.add_row('python -c "import prefect"', f"{cli['import_prefect_s']:.2f}", "1.00x")
    t.add_row("memotune run (every stage cached)", f"{cli['cli_s']:.2f}",
              f"{cli['cli_s'] / cli['import_prefect_s']:.2f}x (target <= 2.5x)")
    console.print(t)
    result = {**inproc, **cli, "per_cached_stage_ms": per_stage * 1000,
              "cli_ratio": cli["cli_s"] / cli["import_prefect_s"], "repeats": args.repeats,
              "cores": os.cpu_count()}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
