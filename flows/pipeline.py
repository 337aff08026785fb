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
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.locking.protocol import LockManager
from prefect.runtime import flow_run

from cache import leases
from cache.locks import lock_manager
from cache.prefect_policy import (
    StageKeyPolicy,
    StageOutput,
    result_storage,
    stage_output,
    stage_policy,
)
from cache.store import ArtifactStore, CorruptEntryError, EntryNotFoundError, StoreError
from flows.config import load_config
from flows.console import note_stage
from flows.home import memotune_home
from flows.plan import boundary_keys, stage_keys
from flows.run_records import RunRecord, RunSummary, StageRun
from stages.base import Stage, StageContext
from stages.pipeline import BY_NAME

DEFAULT_LOCK_DIR = memotune_home() / "locks"


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
              store_url: str, device: str, progress: bool,
              boundaries: list[tuple[int, str]] | None = None) -> dict[str, Any]:
    """One stage on a cache miss. Returns its StageOutput as a plain dict.

    `boundaries`: (epoch, key) of the stage's checkpoint prefixes: it continues
    from the deepest one in the store, and commits those it passes.
    """
    logger = get_run_logger()
    store = ArtifactStore(store_url)
    try:
        existing = store.manifest(key)
    except CorruptEntryError as e:  # a damaged commit record: recompute it
        logger.warning("%s; deleting the entry and recomputing it", e)
        store.delete(key)
        existing = None
    if existing is not None:  # committed by a run that died before Prefect's record
        return stage_output(store, existing, reused=True).model_dump(mode="json")
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
        resumed_s = 0.0
        if boundaries:
            resumed_s = _prefixes(ctx, store, stage, key, dict(boundaries), Path(tmp), fetch_s)
        t0 = time.perf_counter()
        result = spec.load_run()(params, upstream, workdir, ctx)
        compute_s = time.perf_counter() - t0
        manifest = store.commit(key, workdir, stage=stage, compute_s=compute_s,
                                meta={"metrics": result.metrics, "meta": result.meta,
                                      "params": params, "upstream": upstream_keys})
    return stage_output(store, manifest, fetch_s=fetch_s,
                        resumed_s=resumed_s).model_dump(mode="json")


def _prefixes(ctx: StageContext, store: ArtifactStore, stage: str, key: str,
              boundaries: dict[int, str], tmp: Path, fetch_s: dict[str, float]) -> float:
    """Checkpoint prefixes of a training stage: continue from the deepest boundary
    in the store (its fetch is a load, like an upstream's), commit the others as
    training passes them (each an entry of its own, manifest last). Returns the
    compute seconds of the boundary continued from (0.0: from scratch)."""
    resumed_s = 0.0
    for epoch in sorted(boundaries, reverse=True):
        t0 = time.perf_counter()
        try:
            found = store.manifest(boundaries[epoch])
            if found is None:
                continue
            ctx.resume_dir = store.fetch(boundaries[epoch])
        except (CorruptEntryError, EntryNotFoundError) as e:  # damaged: start over
            ctx.logger.warning("checkpoint after epoch %d unusable (%s); not resuming", epoch, e)
            break
        fetch_s[f"{stage}@epoch{epoch}"] = time.perf_counter() - t0
        resumed_s = found.compute_s
        break

    def keep(epoch: int, write: Callable[[Path], None], seconds: float) -> None:
        bkey = boundaries.get(epoch)
        if bkey is None or store.has(bkey):
            return
        folder = tmp / f"boundary-{epoch}"
        folder.mkdir()
        write(folder)
        store.commit(bkey, folder, stage=f"{stage}@epoch", compute_s=seconds,
                     meta={"boundary": {"stage": stage, "epoch": epoch, "of": key}})
        shutil.rmtree(folder)

    ctx.checkpoint = keep
    return resumed_s


@dataclass
class _Outcome:
    """One stage of this run as it happened: its output, and whether Prefect served it.

    `check_s`: reading the stage's record and manifest (the hit check), what a
    cached stage costs itself. Prefect's task-run orchestration around it (state
    calls, tag concurrency slots: up to seconds on a busy server) is left out,
    as it is from a computed stage's compute seconds.
    """

    output: StageOutput
    cached: bool
    check_s: float


def _run_once(planned: list[tuple[Stage, str, dict[str, Any]]],
              bounds: dict[str, dict[int, str]], store: ArtifactStore,
              device: str, progress: bool, locks: LockManager) -> list[_Outcome]:
    records = result_storage(store)
    options = dict(result_storage=records, task_run_name="{stage}[{key:.10}]")
    computing = run_stage.with_options(cache_policy=stage_policy(locks), **options)
    reading = run_stage.with_options(cache_policy=stage_policy(None), **options)
    outcomes: list[_Outcome] = []
    keys: dict[str, str] = {}
    for stage, key, params in planned:
        keys[stage.name] = key
        t0 = time.perf_counter()
        # a sound record now: a hit that needs no lock; else lock, look again, compute
        task_fn = reading if records.is_hit(key) else computing
        check_s = time.perf_counter() - t0
        state = task_fn(stage.name, key, params, {n: keys[n] for n in stage.needs}, store.url,
                        device, progress, sorted(bounds.get(stage.name, {}).items()),
                        return_state=True)
        try:
            out = StageOutput.model_validate(state.result())  # raises the stage's exception
        except Exception as e:
            note_stage(e, stage.name)
            raise
        # "reused": Prefect had no record, but the entry was there: nothing computed
        outcomes.append(_Outcome(out, cached=state.name == "Cached" or out.reused,
                                 check_s=check_s))
    return outcomes


def _stage_runs(outcomes: list[_Outcome]) -> list[StageRun]:
    """The run's stage rows. A cached stage's load is its hit check plus the fetches
    of its files by computing stages; it saved its recorded compute seconds less
    its load seconds. A stage that continued from a checkpoint prefix
    is computed: it loaded the boundary and saved the boundary's compute seconds."""
    cached = {o.output.stage for o in outcomes if o.cached}
    load = {o.output.stage: o.check_s if o.cached else 0.0 for o in outcomes}
    for o in outcomes:
        for need, secs in o.output.fetch_s.items():
            if need in cached:
                load[need] += secs
            elif need.startswith(f"{o.output.stage}@epoch"):
                load[o.output.stage] += secs
    return [StageRun(name=o.output.stage, key=o.output.key,
                     status="cached" if o.cached else "computed",
                     compute_s=0.0 if o.cached else o.output.compute_s,
                     load_s=load[o.output.stage],
                     saved_s=round(max(0.0, (o.output.compute_s if o.cached
                                             else o.output.resumed_s) - load[o.output.stage]), 3)
                     if o.cached or o.output.resumed_s else 0.0)
            for o in outcomes]


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
    leased = [key for _, key, _ in planned]
    bounds = boundary_keys(planned)  # checkpoint prefixes: computed once per run
    leased += [k for b in bounds.values() for k in b.values()]
    with leases.hold(store, leased):  # gc leaves these alone
        for attempt in range(3):
            try:
                outcomes = _run_once(planned, bounds, store, device, progress, manager)
                break
            except UpstreamCorrupt as e:
                if attempt == 2:
                    raise
                logger.warning("%s; deleting it and recomputing", e)
                store.delete(e.key)
                result_storage(store).forget(e.key)
    runs = _stage_runs(outcomes)
    metrics = outcomes[-1].output.metrics
    summary = RunSummary(
        objective=cfg.objective_value(metrics), metrics=metrics, stages=runs,
        flow_run_id=str(flow_run.id) if flow_run.id else None,
        # what the in-stage modes adapted (final/mean lr, ...): run metadata for the tuner
        adapted={o.output.stage: {k: v for k, v in o.output.meta.items()
                                  if isinstance(v, int | float | str)}
                 for o in outcomes if o.output.stage.endswith("finetune")})
    _publish_reuse(runs)
    _publish_trajectories(outcomes)
    doc = summary.model_dump(mode="json")
    if summary_doc is not None:
        store.put_json(summary_doc, doc)
    _record_run(store, cfg.name, started, summary)
    return doc


def _record_run(store: ArtifactStore, name: str, started: float, summary: RunSummary) -> None:
    """runs/<id>.json: which entries this run computed or reused, recorded when it happens
    (one object per run: object-store rules). The reuse dashboard reads these."""
    record = RunRecord(run=summary.flow_run_id or uuid.uuid4().hex, flow_run_name=flow_run.name,
                       config=name, started=started, ended=time.time(),
                       objective=summary.objective, stages=summary.stages)
    try:
        store.put_json(f"runs/{record.run}.json", record.model_dump(mode="json"))
    except StoreError as e:  # a view's input; the run itself succeeded
        logging.getLogger("memotune").warning("could not record run %s: %s", record.run, e)


def _publish_trajectories(outcomes: list[_Outcome]) -> None:
    """A markdown artifact per computed training stage: what its optimizer adapted."""
    for o in outcomes:
        out = o.output
        if o.cached or "steps" not in out.meta:
            continue
        lines = [f"# {out.stage} ({out.key[:12]})", "", "| quantity | value |", "|---|---|"]
        lines += [f"| {k} | {v:.6g} |" for k, v in out.meta.items()
                  if isinstance(v, int | float) and not isinstance(v, bool)]
        lines += ["", f"Trajectory (per-step values and a PNG plot): `{out.uri}/files/"
                  "trajectory.json`, `trajectory.png`."]
        create_markdown_artifact(markdown="\n".join(lines),
                                 key=f"trajectory-{out.stage.replace('_', '-')}",
                                 description=f"In-stage adaptation of {out.stage}")


def _publish_reuse(runs: list[StageRun]) -> None:
    """The `stage-reuse` table artifact: what was computed, what was reused."""
    table = [{"stage": r.name, "key": r.key[:12], "status": r.status,
              "seconds_spent": round(r.spent_s, 3), "seconds_saved": r.saved_s} for r in runs]
    table.append({"stage": "total", "key": "",
                  "status": f"{sum(r.cached for r in runs)}/{len(runs)} cached",
                  "seconds_spent": round(sum(t["seconds_spent"] for t in table), 3),
                  "seconds_saved": round(sum(t["seconds_saved"] for t in table), 3)})
    try:
        create_table_artifact(table=table, key="stage-reuse",
                              description="Per stage: computed or reused from the cache")
    except Exception as e:  # an artifact is a view; never fail the run for it
        logging.getLogger("memotune").warning("could not publish stage-reuse artifact: %s", e)
