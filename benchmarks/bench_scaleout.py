"""Trials per hour of one study with 1 vs 2 Prefect workers (deployments/cluster.py).

The same study (random tuner, same seed, same trial count, the offline default's
search space on the tiny test-size pipeline) runs as flow runs of the pipeline
deployment on a local cluster: Prefect server on Postgres, Redis locks, an S3
store (moto), process workers with one torch thread each. First with one worker
(`--parallel 1`, the second worker paused), then with two (`--parallel 2`),
each on a fresh store prefix. Prints wall seconds, trials per hour and the ratio.

    python benchmarks/bench_scaleout.py --trials 6 --preset small   # or tiny

On a 2-core machine the Prefect server, Postgres and the S3 server share the
cores with the workers, so the ratio is a floor, not what separate hosts give.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.presets import PRESETS  # noqa: E402
from deployments.cluster import Cluster  # noqa: E402  (no Prefect import: env first)

RESULTS_DIR = Path(__file__).parent


def study(cluster: Cluster, name: str, trials: int, parallel: int, preset: str) -> float:
    from flows.config import load_config
    from flows.tune import tune_flow

    cfg = load_config(doc=PRESETS[preset]).model_dump(mode="json")
    t0 = time.perf_counter()
    result = tune_flow(f"{cluster.store_url}-{name}", name, config=cfg, tuner="random",
                       budget=1e9, warmup=trials, seed=0, progress=False, max_trials=trials,
                       deployment="memotune-pipeline/offline-default", parallel=parallel)
    wall = time.perf_counter() - t0
    assert len(result["trials"]) == trials
    return wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="small")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="memotune-bench-") as tmp:
        cluster = Cluster(root=Path(tmp), workers=2)
        try:
            cluster.start()
            os.environ.update(cluster.client_env())
            os.killpg(cluster.procs["worker-1"].pid, signal.SIGSTOP)
            one = study(cluster, "one-worker", args.trials, 1, args.preset)
            os.killpg(cluster.procs["worker-1"].pid, signal.SIGCONT)
            two = study(cluster, "two-workers", args.trials, 2, args.preset)
        finally:
            cluster.stop()
    rows = {"preset": args.preset, "trials": args.trials, "one_worker_s": round(one, 1), "two_workers_s": round(two, 1),
            "one_worker_trials_per_h": round(3600 * args.trials / one, 1),
            "two_workers_trials_per_h": round(3600 * args.trials / two, 1),
            "ratio": round(one / two, 2), "cores": os.cpu_count()}
    (RESULTS_DIR / f"RESULTS_scaleout_{args.preset}.json").write_text(
        json.dumps(rows, indent=1) + "\n")
    print(f"| workers | wall s | trials/h |\n|---|---|---|\n"
          f"| 1 | {rows['one_worker_s']} | {rows['one_worker_trials_per_h']} |\n"
          f"| 2 | {rows['two_workers_s']} | {rows['two_workers_trials_per_h']} |\n"
          f"2 workers / 1 worker: {rows['ratio']}x trials per hour "
          f"({args.trials} {args.preset} trials, {os.cpu_count()} cores)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
