"""Pipeline overheads, as ratios against a baseline run in the same process.

1. cache hit vs raw read: per stage, `store.fetch` (download + sha256 verify)
   against a raw fsspec read of the same bytes, on file:// and on s3:// (a moto
   server on loopback);
2. Prefect orchestration: per stage, a computed pipeline run's wall time minus
   the stages' own compute time, and the wall time of a cached stage;
3. the training loop (stages.training.train, adamw) against a plain PyTorch
   loop on the same model, batches and optimizer settings (aim >= 0.95).

    python benchmarks/bench_pipeline.py [--repeats 5] [--no-s3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from cache.store import ArtifactStore  # noqa: E402
from flows.config import load_config  # noqa: E402

console = Console()
# The default pipeline, smaller so the benchmark is quick; shapes stay the same.
SMALL = ["intermediate_finetune.epochs=1", "target_finetune.epochs=2", "device=cpu"]


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _start_moto() -> tuple[subprocess.Popen, str]:
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-p", str(port),
                             "-H", "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(url, timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
                      AWS_DEFAULT_REGION="us-east-1", AWS_ENDPOINT_URL=url, AWS_ENDPOINT_URL_S3=url)
    import boto3

    bucket = f"bench-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", region_name="us-east-1", endpoint_url=url).create_bucket(Bucket=bucket)
    return proc, f"s3://{bucket}/store"


def run_pipeline(store_url: str, lock_dir: str) -> tuple[dict, float]:
    from flows.pipeline import pipeline_flow

    cfg = load_config(overrides=SMALL)
    t0 = time.perf_counter()
    summary = pipeline_flow(cfg.model_dump(mode="json"), store_url, progress=False,
                            lock_dir=lock_dir)
    return summary, time.perf_counter() - t0


def cache_table(stores: dict[str, str], summaries: dict[str, dict], repeats: int) -> Table:
    table = Table(title=f"cache hit vs raw fsspec read of the same bytes (median of {repeats})")
    for col in ("store", "stage", "bytes", "raw read s", "fetch+verify s", "ratio"):
        table.add_column(col, justify="right")
    for label, url in stores.items():
        store = ArtifactStore(url)
        for stage in summaries[label]["stages"]:
            m = store.manifest(stage["key"])
            paths = [f"{store.root}/objects/{m.key}/files/{f.name}" for f in m.files]

            def raw(paths=paths, store=store) -> None:
                for p in paths:
                    with store.fs.open(p, "rb") as fh:
                        fh.read()

            fetch_dir = Path(tempfile.mkdtemp())

            def fetch(m=m, store=store, fetch_dir=fetch_dir) -> None:
                if store.cache_dir.exists():
                    shutil.rmtree(store.cache_dir)  # a cold fetch each time, like a new worker
                store.fetch(m.key)

            store.cache_dir = fetch_dir / "cache"
            t_raw, t_fetch = _median_time(raw, repeats), _median_time(fetch, repeats)
            table.add_row(label, stage["name"], f"{m.total_bytes:,}", f"{t_raw:.4f}",
                          f"{t_fetch:.4f}", f"{t_fetch / t_raw:.2f}x")
            shutil.rmtree(fetch_dir, ignore_errors=True)
    return table


def prefect_table(computed: dict, wall_computed: float, cached: dict, wall_cached: float) -> Table:
    compute = sum(s["compute_s"] for s in computed["stages"])
    n = len(computed["stages"])
    table = Table(title="Prefect orchestration overhead (file:// store)")
    for col in ("run", "wall s", "stage compute s", "overhead per stage s"):
        table.add_column(col, justify="right")
    table.add_row("all computed", f"{wall_computed:.2f}", f"{compute:.2f}",
                  f"{(wall_computed - compute) / n:.3f}")
    table.add_row("all cached", f"{wall_cached:.2f}", "0.00", f"{wall_cached / n:.3f}")
    return table


def training_table(repeats: int) -> Table:
    """stages.training.train vs a hand-written loop: same model init, batches, AdamW."""
    import math

    import torch
    import torch.nn.functional as F

    from stages.base import StageContext
    from stages.optim import parse_optimizer_settings, schedule_fn
    from stages.params import FinetuneParams
    from stages.training import build_model, train

    torch.manual_seed(0)
    n, length = 960, 32
    data = {"input_ids": torch.randint(5, 80, (n, length)), "attention_mask": torch.ones(n, length, dtype=torch.long),
            "token_type_ids": torch.zeros(n, length, dtype=torch.long), "labels": torch.randint(0, 2, (n,))}
    p = FinetuneParams(epochs=2, batch_size=32, optimizer={"mode": "adamw", "lr": 1e-3})
    settings = parse_optimizer_settings(p.optimizer)
    steps = 2 * math.ceil(n / 32)

    def model():
        return build_model(load_config().intermediate_finetune.model, "sequence", vocab_size=80,
                           max_length=length, num_labels=2, seed=0)

    def ours() -> None:
        train(model(), data, p, StageContext(progress=False))

    def plain() -> None:
        m = model()
        m.train()
        opt = torch.optim.AdamW(m.parameters(), lr=settings.lr, betas=(settings.beta1, settings.beta2),
                                eps=settings.eps, weight_decay=settings.weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule_fn(settings.schedule, steps, settings.warmup))
        gen = torch.Generator().manual_seed(0)
        for _ in range(2):
            perm = torch.randperm(n, generator=gen)
            for i in range(0, n, 32):
                idx = perm[i:i + 32]
                labels = data["labels"][idx]
                logits = m(**{k: v[idx] for k, v in data.items() if k != "labels"}).logits
                loss = F.cross_entropy(logits, labels)
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                loss.item()

    t_ours, t_plain = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        t_plain.append(_median_time(plain, 1))
        t_ours.append(_median_time(ours, 1))
    tp, to = statistics.median(t_plain), statistics.median(t_ours)
    table = Table(title=f"training loop throughput ({steps} steps, batch 32, median of {repeats})")
    for col in ("loop", "seconds", "samples/s", "ratio to plain"):
        table.add_column(col, justify="right")
    table.add_row("plain PyTorch", f"{tp:.2f}", f"{steps * 32 / tp:.0f}", "1.00")
    table.add_row("memotune train()", f"{to:.2f}", f"{steps * 32 / to:.0f}", f"{tp / to:.3f}")
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-s3", action="store_true", help="skip the s3:// (moto) measurements")
    args = ap.parse_args()

    from prefect.testing.utilities import prefect_test_harness

    tmp = Path(tempfile.mkdtemp(prefix="memotune-bench-"))
    os.environ["MEMOTUNE_FETCH_DIR"] = str(tmp / "fetch")
    stores = {"file": str(tmp / "store")}
    moto = None
    if not args.no_s3:
        moto, stores["s3"] = _start_moto()
    try:
        with prefect_test_harness(server_startup_timeout=120):
            summaries, walls = {}, {}
            for label, url in stores.items():
                summaries[label], walls[label] = run_pipeline(url, str(tmp / "locks"))
            cached, wall_cached = run_pipeline(stores["file"], str(tmp / "locks"))
            assert all(s["status"] == "cached" for s in cached["stages"])
            console.print(prefect_table(summaries["file"], walls["file"], cached, wall_cached))
            console.print(cache_table(stores, summaries, args.repeats))
        console.print(training_table(args.repeats))
    finally:
        if moto is not None:
            moto.terminate()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
