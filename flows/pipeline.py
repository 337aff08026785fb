"""The pipeline flow: each stage a Prefect task whose cache key is its content key.

A hit is Prefect's "Cached" state and returns the stored StageOutput (small
JSON); a miss fetches (and verifies) the upstream entries it needs, runs the
stage in a fresh work folder, commits the folder to the store (manifest last)
and returns its StageOutput, which Prefect then records beside the entry.
Tasks get keys and URLs, never models or datasets: Prefect hashes inputs.
"""

from __future__ import annotations

import logging
import os
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.locking.protocol import LockManager
from prefect.runtime import flow_run

from cache import leases
from cache.locks import lock_manager
from cache.prefect_policy import StageKeyPolicy, result_storage, stage_output, stage_policy
from cache.store import ArtifactStore, CorruptEntryError, EntryNotFoundError, StoreError
from flows.config import load_config
from flows.console import note_stage
from flows.plan import stage_keys
from stages.base import Stage, StageContext
from stages.pipeline import BY_NAME

DEFAULT_LOCK_DIR = Path.home() / ".memotune" / "locks"


class UpstreamCorrupt(RuntimeError):
    """An upstream entry is damaged or gone; the flow drops it and recomputes."""

    def __init__(self, key: str, detail: str):
        super().__init__(f"upstream entry {key} is unusable: {detail}")
        self.key = key


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@task(name="stage", persist_result=True, result_serializer="json", cache_policy=StageKeyPolicy())
def run_stage(stage: str, key: str, params: dict[str, Any], upstream_keys: dict[str, str],
              store_url: str, device: str, progress: bool) -> dict[str, Any]:
    """One stage on a cache miss. Returns its StageOutput as a plain dict."""
    logger = get_run_logger()
    store = ArtifactStore(store_url)
    try:
        existing = store.manifest(key)
    except CorruptEntryError as e:  # a damaged commit record: recompute it
        logger.warning("%s; deleting the entry and recomputing it", e)
        store.delete(key)
        existing = None
    if existing is not None:  # committed by a run that died before Prefect's record
        return {**stage_output(store, existing), "reused": True}
    spec = BY_NAME[stage]
    fetch_s: dict[str, float] = {}
    upstream: dict[str, Path] = {}
    with tempfile.TemporaryDirectory(prefix=f"memotune-{stage}-") as tmp:
        for need in spec.needs:
            t0 = time.perf_counter()
            try:
                upstream[need] = store.fetch(upstream_keys[need])
            except (CorruptEntryError, EntryNotFoundError) as e:
                raise UpstreamCorrupt(upstream_keys[need], str(e)) from e
            fetch_s[need] = time.perf_counter() - t0
        workdir = Path(tmp) / "out"
        workdir.mkdir()
        ctx = StageContext(device=device, logger=logger, progress=progress, stage=stage, key=key)
        t0 = time.perf_counter()
        result = spec.load_run()(params, upstream, workdir, ctx)
        compute_s = time.perf_counter() - t0
        manifest = store.commit(key, workdir, stage=stage, compute_s=compute_s,
                                meta={"metrics": result.metrics, "meta": result.meta,
                                      "params": params, "upstream": upstream_keys})
    out = stage_output(store, manifest)
    out["fetch_s"] = fetch_s
    return out


def _run_once(planned: list[tuple[Stage, str, dict[str, Any]]], store: ArtifactStore,
              device: str, progress: bool, locks: LockManager) -> list[dict[str, Any]]:
    records = result_storage(store)
    options = dict(result_storage=records, task_run_name="{stage}[{key:.10}]")
    computing = run_stage.with_options(cache_policy=stage_policy(locks), **options)
    reading = run_stage.with_options(cache_policy=stage_policy(None), **options)
    rows: list[dict[str, Any]] = []
    keys: dict[str, str] = {}
    for stage, key, params in planned:
        keys[stage.name] = key
        t0 = time.perf_counter()
        # a sound record now: a hit that needs no lock; else lock, look again, compute
        task_fn = reading if records.is_hit(key) else computing
        state = task_fn(stage.name, key, params, {n: keys[n] for n in stage.needs}, store.url,
                        device, progress, return_state=True)
        wall = time.perf_counter() - t0
        try:
            out = state.result()  # raises the stage's exception on failure
        except Exception as e:
            note_stage(e, stage.name)
            raise
        # "reused": Prefect had no record, but the entry was there: nothing computed
        cached = state.name == "Cached" or bool(out.get("reused"))
        rows.append({"name": stage.name, "key": key,
                     "status": "cached" if cached else "computed",
                     "compute_s": 0.0 if cached else out["compute_s"],
                     "load_s": wall if cached else 0.0,
                     "recorded_compute_s": out["compute_s"], "output": out})
    # loading a cached upstream's files is part of its load cost
    by_name = {r["name"]: r for r in rows}
    for r in rows:
        for need, secs in r["output"].get("fetch_s", {}).items():
            if by_name[need]["status"] == "cached":
                by_name[need]["load_s"] += secs
    return rows


@flow(name="memotune-pipeline", log_prints=True)
def pipeline_flow(config: dict[str, Any], store_url: str, progress: bool = True,
                  lock_dir: str | None = None, summary_doc: str | None = None,
                  locks: str | None = None) -> dict[str, Any]:
    """Run the four stages in order, reusing every cached prefix.

    `summary_doc`: also write the returned summary to this store path (how a
    tune flow reads the result of a run that a work-pool worker executed).
    `locks`: `file` (one host, flock files in `lock_dir`) or a `redis://` URL
    (several hosts); default $MEMOTUNE_LOCKS, else `file`.
    """
    logger = get_run_logger()
    started = time.time()
    cfg = load_config(doc=config)
    store = ArtifactStore(store_url)
    device = resolve_device(cfg.device)
    manager = lock_manager(locks or os.environ.get("MEMOTUNE_LOCKS"),
                           Path(lock_dir) if lock_dir else DEFAULT_LOCK_DIR)
    planned = stage_keys(cfg)
    with leases.hold(store, [key for _, key, _ in planned]):  # gc leaves these alone
        for attempt in range(3):
            try:
                rows = _run_once(planned, store, device, progress, manager)
                break
            except UpstreamCorrupt as e:
                if attempt == 2:
                    raise
                logger.warning("%s; deleting it and recomputing", e)
                store.delete(e.key)
                result_storage(store).forget(e.key)
    metrics = rows[-1]["output"]["metrics"]
    summary = {
        "objective": cfg.objective_value(metrics),
        "metrics": metrics,
        "stages": [{**{k: r[k] for k in ("name", "key", "status", "compute_s", "load_s")},
                    "saved_s": _saved_s(r)} for r in rows],
        "flow_run_id": str(flow_run.id) if flow_run.id else None,
    }
    _publish_reuse(rows)
    _publish_trajectories(rows)
    # what the in-stage modes adapted (final/mean lr, ...): run metadata for the tuner
    summary["adapted"] = {r["name"]: {k: v for k, v in r["output"]["meta"].items()
                                      if isinstance(v, int | float | str)}
                          for r in rows if r["name"].endswith("finetune")}
    if summary_doc is not None:
        store.put_json(summary_doc, summary)
    _record_run(store, cfg.name, started, summary)
    return summary


def _saved_s(row: dict[str, Any]) -> float:
    """Seconds a cached stage saved: its recorded compute time less its load time."""
    if row["status"] != "cached":
        return 0.0
    return round(max(0.0, row["recorded_compute_s"] - row["load_s"]), 3)


def _record_run(store: ArtifactStore, name: str, started: float, summary: dict[str, Any]) -> None:
    """runs/<id>.json: which entries this run computed or reused, recorded when it happens
    (one object per run: object-store rules). The reuse dashboard reads these."""
    run_id = summary["flow_run_id"] or uuid.uuid4().hex
    doc = {"run": run_id, "flow_run_name": flow_run.name, "config": name, "started": started,
           "ended": time.time(), "objective": summary["objective"], "stages": summary["stages"]}
    try:
        store.put_json(f"runs/{run_id}.json", doc)
    except StoreError as e:  # a view's input; the run itself succeeded
        logging.getLogger("memotune").warning("could not record run %s: %s", run_id, e)


def _publish_trajectories(rows: list[dict[str, Any]]) -> None:
    """A markdown artifact per computed training stage: what its optimizer adapted."""
    for r in rows:
        meta = r["output"]["meta"]
        if r["status"] != "computed" or "steps" not in meta:
            continue
        lines = [f"# {r['name']} ({r['key'][:12]})", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in meta.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)]
        lines += ["", f"Trajectory (per-step values and a PNG plot): `{r['output']['uri']}/files/"
                  "trajectory.json`, `trajectory.png`."]
        create_markdown_artifact(markdown="\n".join(lines),
                                 key=f"trajectory-{r['name'].replace('_', '-')}",
                                 description=f"In-stage adaptation of {r['name']}")


def _publish_reuse(rows: list[dict[str, Any]]) -> None:
    """The `stage-reuse` table artifact: what was computed, what was reused."""
    table = [{"stage": r["name"], "key": r["key"][:12], "status": r["status"],
              "seconds_spent": round(r["compute_s"] + r["load_s"], 3),
              "seconds_saved": _saved_s(r)} for r in rows]
    table.append({"stage": "total", "key": "",
                  "status": f"{sum(r['status'] == 'cached' for r in rows)}/{len(rows)} cached",
                  "seconds_spent": round(sum(t["seconds_spent"] for t in table), 3),
                  "seconds_saved": round(sum(t["seconds_saved"] for t in table), 3)})
    try:
        create_table_artifact(table=table, key="stage-reuse",
                              description="Per stage: computed or reused from the cache")
    except Exception as e:  # an artifact is a view; never fail the run for it
        logging.getLogger("memotune").warning("could not publish stage-reuse artifact: %s", e)
