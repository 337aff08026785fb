"""The tune flow: a thin loop of ask -> pipeline run (a subflow) -> tell.

The tuner sees the search space's stages (those with a `search:` section).
Pipeline stages without tuned params fold into a tuned one: leading ones into
the first, later ones into the tuned stage before them (evaluate into
target_finetune), so tuner stage costs add up to the measured seconds.

After every tell the study (tuner state, every trial) is written to the store
as one JSON document, so a study killed at any point resumes with each
observation exactly once: a run in flight when it died is asked again and
reuses whatever stages it had already committed.

Scale-out: with `deployment` (a pipeline deployment on a work pool, e.g.
`memotune-pipeline/offline-default`) each trial is a flow run that a worker
picks up, and up to `parallel` of them are in flight at once; the tuner
proposes distinct candidates for the pending ones (fantasies), and each run
writes its summary to the store, where this flow reads it. Candidates still
pending in a saved study (in flight when it stopped) are dispatched again
first on resume.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from cache.store import ArtifactStore
from flows.config import PipelineConfig, apply_params, load_config
from flows.pipeline import pipeline_flow
from flows.study import StudyError, study_doc_name
from stages.pipeline import STAGE_NAMES
from tuners import CacheView, Candidate, SearchSpace, make_tuner


@dataclass(frozen=True)
class StageGroups:
    """Which pipeline stages each tuner stage stands for."""

    groups: tuple[tuple[int, ...], ...]  # pipeline stage indices per tuner stage
    tuned: tuple[int, ...]  # pipeline index of each tuner stage's own stage

    @classmethod
    def of(cls, space: SearchSpace) -> StageGroups:
        tuned = tuple(STAGE_NAMES.index(n) for n in space.stage_names)
        owner = [0] * len(STAGE_NAMES)
        for i in range(len(STAGE_NAMES)):
            before = [t for t, p in enumerate(tuned) if p <= i]
            owner[i] = before[-1] if before else 0
        return cls(tuple(tuple(i for i, o in enumerate(owner) if o == t) for t in range(len(tuned))),
                   tuned)

    def fold(self, rows: list[dict[str, Any]]) -> tuple[list[float], list[bool]]:
        """Pipeline stage rows -> tuner stage costs (seconds) and cached flags."""
        costs = [sum(rows[i]["compute_s"] + rows[i]["load_s"] for i in g) for g in self.groups]
        cached = [rows[p]["status"] == "cached" for p in self.tuned]
        return costs, cached


def cache_view(store: ArtifactStore, trials: list[dict[str, Any]], groups: StageGroups) -> CacheView:
    """Which prefixes of earlier trials are still in the store, with their load times."""
    runs = []
    for t in trials:
        keys = [s["key"] for s in t["stages"]]
        in_store = [store.has(keys[p]) for p in groups.tuned]
        loads = [t["tuner_costs"][k] if t["tuner_cached"][k] else None
                 for k in range(len(groups.tuned))]
        runs.append((t["params"], in_store, loads))
    return CacheView.from_runs(runs)


def candidate_config(cfg: PipelineConfig, space: SearchSpace, cand: Candidate) -> PipelineConfig:
    return apply_params(cfg, {name: space.active_params(k, params)
                              for k, (name, params) in enumerate(zip(space.stage_names,
                                                                     cand.params, strict=True))})


@flow(name="memotune-tune", log_prints=True)
def tune_flow(store_url: str, study: str, config: dict[str, Any] | None = None,
              tuner: str = "eeipu", budget: float = 900.0, warmup: int = 5, seed: int = 0,
              resume: bool = False, progress: bool = True,
              lock_dir: str | None = None, extend: bool = False, locks: str | None = None,
              max_trials: int | None = None, deployment: str | None = None,
              parallel: int = 1) -> dict[str, Any]:
    """Run (or resume) a study until `budget` seconds of stage time are spent.

    `extend` (for scheduled deployments): resume the study if it exists, else
    start it, and give it `budget` more seconds than it had. `max_trials`
    stops a study earlier, after that many trials in total. `deployment`
    runs each trial as a flow run of that pipeline deployment (picked up by
    the work pool's workers), `parallel` of them at a time.
    """
    if parallel < 1:
        raise StudyError(f"parallel must be >= 1, got {parallel}")
    if parallel > 1 and deployment is None:
        raise StudyError("parallel > 1 needs a deployment: trials run in parallel as flow "
                         "runs on a work pool (see deployments/prefect.yaml)")
    logger = get_run_logger()
    store = ArtifactStore(store_url)
    doc_name = study_doc_name(study)
    doc = store.get_json(doc_name) if resume or extend else None
    if resume and not extend and doc is None:
        raise StudyError(f"no study {study!r} in {store_url}")
    if not (resume or extend) and store.get_json(doc_name) is not None:
        raise StudyError(f"study {study!r} exists in {store_url}: use --resume {study}")
    if doc is None:
        doc = {"study": study, "config": config, "tuner": tuner, "budget": budget,
               "warmup": warmup, "seed": seed, "trials": [], "tuner_state": None}
    if extend and doc["tuner_state"] is not None:
        doc["budget"] = doc["budget"] + budget
    elif resume:
        doc["budget"] = max(budget, doc["budget"])
    cfg = load_config(doc=doc["config"])
    space = SearchSpace.from_config(cfg.search, STAGE_NAMES)
    groups = StageGroups.of(space)
    t = make_tuner(doc["tuner"], space, budget=doc["budget"], seed=doc["seed"],
                   warmup=doc["warmup"])
    if doc["tuner_state"] is not None:
        t.load_state_dict(doc["tuner_state"])
        t.budget = float(doc["budget"])
    trials: list[dict[str, Any]] = doc["trials"]

    progress_id = create_progress_artifact(progress=_percent(t.spent, t.budget),
                                           description=f"study {study}: budget spent")
    run = _runner(deployment, store_url, study, progress, lock_dir, locks)
    resubmit = sorted(t.pending.values(), key=lambda c: c.id)  # in flight when it stopped
    inflight: dict[Future[dict[str, Any]], tuple[Candidate, list[dict[str, Any]]]] = {}

    def room() -> bool:
        n = len(trials) + len(inflight)
        return (len(inflight) < parallel and t.spent < t.budget
                and (max_trials is None or n < max_trials))

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        submit = pool.submit if deployment is not None else _run_here
        while True:
            while room():
                cand = resubmit.pop(0) if resubmit else t.ask(cache_view(store, trials, groups))
                run_cfg = candidate_config(cfg, space, cand)
                active = [space.active_params(k, p) for k, p in enumerate(cand.params)]
                logger.info("trial %d: %s (reusing %d cached stages by choice)", cand.id,
                            active, cand.prefix_depth)
                inflight[submit(run, cand, run_cfg.model_dump(mode="json"))] = (cand, active)
            if not inflight:
                break
            done, _ = wait(inflight, return_when=FIRST_COMPLETED)
            for fut in sorted(done, key=lambda f: inflight[f][0].id):
                cand, active = inflight.pop(fut)
                summary = fut.result()
                costs, cached = groups.fold(summary["stages"])
                t.tell(cand, summary["objective"], costs, cached)
                trials.append({
                    "id": cand.id, "params": cand.params, "active_params": active,
                    "prefix_depth": cand.prefix_depth, "objective": summary["objective"],
                    "metrics": summary["metrics"], "stages": summary["stages"],
                    "adapted": summary["adapted"], "tuner_costs": costs,
                    "tuner_cached": cached, "spent": t.spent,
                    "flow_run": summary.get("flow_run"),
                    "flow_run_id": summary.get("flow_run_id")})
                doc["tuner_state"] = t.state_dict()
                store.put_json(doc_name, doc)  # one put: the study is whole or not written
                update_progress_artifact(progress_id, progress=_percent(t.spent, t.budget))
    _publish_trials(trials, space)
    best = max((x for x in trials if x["objective"] is not None), key=lambda x: x["objective"],
               default=None)
    return {"study": study, "tuner": doc["tuner"], "budget": t.budget, "spent": t.spent,
            "trials": trials, "best": best, "stage_names": list(space.stage_names)}


RunTrial = Callable[[Candidate, dict[str, Any]], dict[str, Any]]


def _runner(deployment: str | None, store_url: str, study: str, progress: bool,
            lock_dir: str | None, locks: str | None = None) -> RunTrial:
    """How one trial runs: a pipeline subflow here, or a flow run of `deployment`."""
    if deployment is None:
        def here(cand: Candidate, config: dict[str, Any]) -> dict[str, Any]:
            return pipeline_flow(config, store_url, progress=progress, lock_dir=lock_dir,
                                 locks=locks)

        return here

    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    check_deployment(deployment)
    store = ArtifactStore(store_url)

    def on_pool(cand: Candidate, config: dict[str, Any]) -> dict[str, Any]:
        doc = f"studies/{study}/runs/{cand.id}.json"
        params = {"config": config, "store_url": store_url, "progress": False,
                  "summary_doc": doc}
        if locks is not None:  # else the workers' own MEMOTUNE_LOCKS
            params["locks"] = locks
        fr = run_deployment(deployment, parameters=params,
                            timeout=None, poll_interval=2)
        state = fr.state
        if state is None or state.type != StateType.COMPLETED:
            raise RuntimeError(f"trial {cand.id}: flow run {fr.name!r} of {deployment!r} ended "
                               f"{state.name if state else 'without a state'}; the study is "
                               f"saved, resume it to run this candidate again")
        summary = store.get_json(doc)
        if summary is None:
            raise RuntimeError(f"trial {cand.id}: flow run {fr.name!r} wrote no summary to {doc}")
        return {**summary, "flow_run": fr.name}

    return on_pool


def check_deployment(name: str) -> None:
    """Raise StudyError unless the Prefect API has deployment `name` (flow/deployment)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise StudyError(f"deployment {name!r} not found on the Prefect API; create it "
                             "with `prefect deploy --prefect-file deployments/prefect.yaml`") from None


def _run_here(fn: RunTrial, *args: Any) -> Future[dict[str, Any]]:
    """Run now, in this thread (a subflow of the tune flow), as a finished future."""
    fut: Future[dict[str, Any]] = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as e:  # re-raised by fut.result() in the loop
        fut.set_exception(e)
    return fut


def shown_params(trial: dict[str, Any]) -> list[dict[str, Any]]:
    """A trial's params as the pipeline got them (inactive conditional params left out)."""
    return trial.get("active_params", trial["params"])


def _percent(spent: float, budget: float) -> float:
    return round(min(100.0, 100.0 * spent / budget), 1)


def _publish_trials(trials: list[dict[str, Any]], space: SearchSpace) -> None:
    rows = []
    for x in trials:
        row: dict[str, Any] = {"trial": x["id"]}
        for name, params in zip(space.stage_names, shown_params(x), strict=True):
            row.update({f"{name}.{k}": v for k, v in params.items()})
        row.update(objective=x["objective"], cached_stages=sum(s["status"] == "cached"
                                                               for s in x["stages"]),
                   cost_s=round(sum(x["tuner_costs"]), 2), spent_s=round(x["spent"], 1))
        rows.append(row)
    create_table_artifact(table=rows, key="tune-trials", description="Trials of this study")


def plot_progress(result: dict[str, Any], path: Path) -> Path:
    """Best objective against spent budget (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, ys, best = [], [], float("-inf")
    for x in result["trials"]:
        if x["objective"] is not None:
            best = max(best, x["objective"])
        xs.append(x["spent"])
        ys.append(best)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.step(xs, ys, where="post", marker="o", ms=3)
    ax.set_xlabel("budget spent (stage seconds)")
    ax.set_ylabel("best objective")
    ax.set_title(f"{result['study']} ({result['tuner']})")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
