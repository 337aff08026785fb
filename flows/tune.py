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

import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, tags
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)

from cache.store import ArtifactStore
from flows.config import load_config
from flows.fidelity import StoreView, blind_first_rung, study_space
from flows.pipeline import pipeline_flow
from flows.run_records import RunSummary, StageRun, StudyRecord, StudyResult, Trial, round_sig
from flows.study import StudyError, study_doc_name
from flows.validation import check_dispatch
from stages.pipeline import STAGE_NAMES
from tuners import Candidate, SearchSpace, make_tuner
from tuners.mf import MFCandidate


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

    def fold(self, rows: list[StageRun]) -> tuple[list[float], list[bool]]:
        """Pipeline stage rows -> tuner stage costs (seconds) and cached flags."""
        costs = [sum(rows[i].spent_s for i in g) for g in self.groups]
        cached = [rows[p].cached for p in self.tuned]
        return costs, cached


@flow(name="memotune-tune", log_prints=True)
def tune_flow(store_url: str, study: str, config: dict[str, Any] | None = None,
              tuner: str = "eeipu", budget: float = 900.0, warmup: int = 5, seed: int = 0,
              resume: bool = False, progress: bool = True,
              lock_dir: str | None = None, extend: bool = False, locks: str | None = None,
              max_trials: int | None = None, deployment: str | None = None,
              parallel: int = 1, fidelity: str | None = None) -> dict[str, Any]:
    """Run (or resume) a study until `budget` seconds of stage time are spent.

    `extend` (for scheduled deployments): resume the study if it exists, else
    start it, and give it `budget` more seconds than it had. `max_trials`
    stops a study earlier, after that many trials in total. `deployment`
    runs each trial as a flow run of that pipeline deployment (picked up by
    the work pool's workers), `parallel` of them at a time. `fidelity`: the
    training stage whose epochs a multi-fidelity tuner sets (default: the last
    tuned stage); a resumed study keeps its own.
    """
    check_dispatch(parallel, deployment)
    logger = get_run_logger()
    store = ArtifactStore(store_url)
    doc_name = study_doc_name(study)
    found = store.get_json(doc_name) if resume or extend else None
    if resume and not extend and found is None:
        raise StudyError(f"no study {study!r} in {store_url}")
    if not (resume or extend) and store.get_json(doc_name) is not None:
        raise StudyError(f"study {study!r} exists in {store_url}: use --resume {study}")
    if found is None:
        rec = StudyRecord(study=study, config=config, tuner=tuner, budget=budget, warmup=warmup,
                          seed=seed, fidelity=fidelity)
    else:
        rec = StudyRecord.model_validate(found)
        if fidelity is not None and fidelity != rec.fidelity:
            raise StudyError(f"--fidelity {fidelity}: study {study!r} has its rungs over "
                             f"{rec.fidelity or 'the last tuned stage'}'s epochs; a resumed "
                             "study keeps its fidelity")
    saved_budget = rec.budget if found is not None else None  # a resumed study's, as stored
    if extend and rec.tuner_state is not None:
        rec.budget += budget
    elif resume:
        rec.budget = max(budget, rec.budget)
    cfg = load_config(doc=rec.config)
    study_sp = study_space(cfg, rec.tuner, rec.fidelity)
    space, fid = study_sp.space, study_sp.fidelity
    if fid is not None and not fid.resumable:
        logger.warning("%s's schedule has no checkpoint prefixes: each promotion of %s trains "
                       "from scratch (use a constant or wsd schedule without warm-up)",
                       fid.stage, rec.tuner)
    groups = StageGroups.of(space)
    view = StoreView(store, cfg, study_sp, groups.tuned)
    t = make_tuner(rec.tuner, space, budget=rec.budget, seed=rec.seed or 0,
                   warmup=rec.warmup if rec.warmup is not None else warmup,
                   **(fid.tuner_kwargs() if fid is not None else {}))
    if rec.tuner_state is not None:
        t.load_state_dict(rec.tuner_state)
        t.budget = float(rec.budget)
    trials = rec.trials

    rec.stage_names = list(space.stage_names)
    keys = ArtifactKeys.of(study)
    progress_id = create_progress_artifact(progress=_percent(t.spent, t.budget), key=keys.progress,
                                           description=_progress_note(study, trials, t))
    run = _runner(deployment, store_url, study, progress, lock_dir, locks, tuner=rec.tuner)
    resubmit = sorted(t.pending.values(), key=lambda c: c.id)  # in flight when it stopped
    inflight: dict[Future[tuple[RunSummary, str]], tuple[Candidate, list[dict[str, Any]]]] = {}

    def room() -> bool:
        n = len(trials) + len(inflight)
        return (len(inflight) < parallel and t.spent < t.budget
                and (max_trials is None or n < max_trials))

    n_before = len(trials)

    def save(status: str, reason: str | None = None) -> None:
        rec.status, rec.ended_reason, rec.updated = status, reason, time.time()
        out = rec
        if saved_budget is not None and len(trials) == n_before:
            # no trial told yet: a resumed/extended study keeps its stored budget, so a run
            # that dies before its first trial does not extend it twice
            out = rec.model_copy(update={"budget": saved_budget})
        store.put_json(doc_name, out.model_dump(mode="json"))  # one put: whole or not written

    def told(cand: Candidate, active: list[dict[str, Any]], summary: RunSummary,
             flow_run_name: str) -> None:
        costs, cached = groups.fold(summary.stages)
        study_sp.resumed_from(cand, summary)  # multi-fidelity: where the rung's training began
        t.tell(cand, summary.objective, costs, cached)
        trials.append(Trial(id=cand.id, params=cand.params, active_params=active,
                            prefix_depth=cand.prefix_depth, objective=summary.objective,
                            metrics=summary.metrics, stages=summary.stages,
                            adapted=summary.adapted, tuner_costs=costs, tuner_cached=cached,
                            spent=t.spent, flow_run=flow_run_name,
                            flow_run_id=summary.flow_run_id, **_rung_fields(cand)))
        rec.tuner_state = t.state_dict()
        save("running")
        if fid is not None and not warned and (blind := blind_first_rung(
                trials, fid, skips=getattr(t, "skip_blind_rungs", False))):
            logger.warning(blind)
            warned.append(blind)
        # the Prefect UI's view of the study, after every trial
        update_progress_artifact(progress_id, progress=_percent(t.spent, t.budget),
                                 description=_progress_note(study, trials, t))
        _publish_trials(rec, keys)

    warned: list[str] = []  # said once per study run
    save("running")  # the dashboard shows the study from now on
    try:
        with ThreadPoolExecutor(max_workers=parallel) as pool:
            submit = pool.submit if deployment is not None else _run_here
            while True:
                while room():
                    cand = resubmit.pop(0) if resubmit else t.ask(view(trials))
                    run_cfg = study_sp.config(cfg, cand)
                    active = list(study_sp.stage_params(cand).values())
                    logger.info("trial %d: %s (reusing %d cached stages by choice)", cand.id,
                                active, cand.prefix_depth)
                    inflight[submit(run, cand, run_cfg.model_dump(mode="json"))] = (cand, active)
                if not inflight:
                    break
                done, _ = wait(inflight, return_when=FIRST_COMPLETED)
                for fut in sorted(done, key=lambda f: inflight[f][0].id):
                    cand, active = inflight.pop(fut)
                    told(cand, active, *fut.result())
    except BaseException as e:
        try:  # the study as of its last trial, marked as stopped (it resumes the same)
            save("failed", f"{type(e).__name__}: {e}"[:500])
            _publish_end(rec, t, keys, progress_id,
                         f"stopped after {len(trials)} trials ({type(e).__name__}); the study "
                         f"is saved: resume it with --resume {study}")
        except Exception as again:  # e.g. the store is what failed: report the first error
            logger.warning("could not record that study %s stopped: %s", study, again)
        raise
    if max_trials is not None and len(trials) >= max_trials and t.spent < t.budget:
        reason = (f"finished: max_trials={max_trials} reached, "
                  f"{_percent(t.spent, t.budget):g}% of the {t.budget:.0f} s budget spent")
    else:
        reason = f"finished: budget spent ({t.spent:.0f} of {t.budget:.0f} s)"
    save("finished", reason)
    _publish_end(rec, t, keys, progress_id, reason)
    return StudyResult(study=study, tuner=rec.tuner, budget=t.budget, spent=t.spent,
                       trials=trials, best=rec.best,
                       stage_names=list(space.stage_names)).model_dump(mode="json")


def _rung_fields(cand: Candidate) -> dict[str, Any]:
    """A multi-fidelity segment's configuration number, rung and epochs (for its Trial)."""
    if not isinstance(cand, MFCandidate):
        return {}
    return {"config_id": cand.trial, "rung": cand.rung, "epochs": cand.epochs}


# a trial's run: its summary and the name of its flow run
RunTrial = Callable[[Candidate, dict[str, Any]], tuple[RunSummary, str]]


def trial_run_name(study: str, trial: int) -> str:
    """The flow run name of a study's trial: `<study>-<trial>`."""
    return f"{study}-{trial}"


def trial_tags(study: str, tuner: str, trial: int) -> list[str]:
    """Tags of a trial's flow run (and its task runs): filter the Prefect UI by study."""
    return [f"study:{study}", f"tuner:{tuner}", f"trial:{trial}"]


def _runner(deployment: str | None, store_url: str, study: str, progress: bool,
            lock_dir: str | None, locks: str | None = None, tuner: str = "?") -> RunTrial:
    """How one trial runs: a pipeline subflow here, or a flow run of `deployment`.

    Either way the trial's flow run is named `<study>-<trial>` and tagged with the
    study, tuner and trial, and takes no input from an earlier trial's run.
    """
    if deployment is None:
        def here(cand: Candidate, config: dict[str, Any]) -> tuple[RunSummary, str]:
            name = trial_run_name(study, cand.id)
            with tags(*trial_tags(study, tuner, cand.id)):
                # return_state: Prefect links a subflow's returned value (and its items) to
                # that run by id() in the tune flow's context, and a later trial's
                # parameters can reuse a freed one's id: the next trial's run then records
                # a `flow_run` task input from this one (a false dependency, which the
                # Prefect UI's Task runs list cannot parse). A returned state is not linked.
                state = pipeline_flow.with_options(flow_run_name=name)(
                    config, store_url, progress=progress, lock_dir=lock_dir, locks=locks,
                    return_state=True)
            return RunSummary.model_validate(state.result()), name

        return here

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType
    from prefect.deployments import run_deployment

    check_deployment(deployment)
    store = ArtifactStore(store_url)
    # One flow-run creation at a time: a SQLite-backed Prefect API answers 503 to
    # simultaneous ones and the client then backs off 2, 4, 8... seconds, which
    # delays a parallel trial by up to a minute. Waiting for runs is not serialized.
    creating = threading.Lock()

    def on_pool(cand: Candidate, config: dict[str, Any]) -> tuple[RunSummary, str]:
        doc = f"studies/{study}/runs/{cand.id}.json"
        params = {"config": config, "store_url": store_url, "progress": False,
                  "summary_doc": doc}
        if locks is not None:  # else the workers' own MEMOTUNE_LOCKS
            params["locks"] = locks
        with creating:
            fr = run_deployment(deployment, parameters=params, timeout=0,
                                flow_run_name=trial_run_name(study, cand.id),
                                tags=trial_tags(study, tuner, cand.id))
        with get_client(sync_client=True) as client:
            while fr.state is None or not fr.state.is_final():
                time.sleep(2)
                fr = client.read_flow_run(fr.id)
        state = fr.state
        if state is None or state.type != StateType.COMPLETED:
            raise RuntimeError(f"trial {cand.id}: flow run {fr.name!r} of {deployment!r} ended "
                               f"{state.name if state else 'without a state'}; the study is "
                               f"saved, resume it to run this candidate again")
        summary = store.get_json(doc)
        if summary is None:
            raise RuntimeError(f"trial {cand.id}: flow run {fr.name!r} wrote no summary to {doc}")
        return RunSummary.model_validate(summary), fr.name

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


def _run_here(fn: RunTrial, *args: Any) -> Future[tuple[RunSummary, str]]:
    """Run now, in this thread (a subflow of the tune flow), as a finished future."""
    fut: Future[tuple[RunSummary, str]] = Future()
    try:
        fut.set_result(fn(*args))
    except BaseException as e:  # re-raised by fut.result() in the loop
        fut.set_exception(e)
    return fut


def _percent(spent: float, budget: float) -> float:
    return round(min(100.0, 100.0 * spent / budget), 1)


@dataclass(frozen=True)
class ArtifactKeys:
    """Per-study Prefect artifact keys (lowercase letters, digits and dashes only)."""

    trials: str
    progress: str
    summary: str

    @classmethod
    def of(cls, study: str) -> ArtifactKeys:
        slug = re.sub(r"[^a-z0-9-]+", "-", study.lower()).strip("-") or "study"
        return cls(f"tune-trials-{slug}", f"tune-progress-{slug}", f"tune-summary-{slug}")


def _progress_note(study: str, trials: list[Trial], t: Any) -> str:
    return (f"study {study}: {len(trials)} trials, {t.spent:.0f} of {t.budget:.0f} s "
            f"of stage time spent")


def _publish_trials(rec: StudyRecord, keys: ArtifactKeys) -> None:
    """The trials table: every param any trial had (the union), numbers to 4 digits."""
    columns = rec.param_columns()
    rows = []
    for x in rec.trials:
        params = x.flat_params(rec.tuned_stages)
        row: dict[str, Any] = {"trial": x.id, "flow_run": x.flow_run or ""}
        if x.rung is not None:  # multi-fidelity: which configuration, at which rung
            row.update(config=x.config_id, rung=x.rung)
        row.update({c: round_sig(params[c]) if c in params else "" for c in columns})
        row.update(objective=round_sig(x.objective) if x.objective is not None else "failed",
                   reused_stages=f"{x.n_reused}/{len(x.stages)}",
                   cost_s=round_sig(x.cost_s), saved_s=round_sig(x.saved_s),
                   spent_s=round_sig(x.spent))
        rows.append(row)
    create_table_artifact(table=rows, key=keys.trials,
                          description=f"Trials of study {rec.study} ({rec.tuner}"
                                      f"{_rungs_over(rec)})")


def _rungs_over(rec: StudyRecord) -> str:
    """`, rungs over <stage> epochs` for a multi-fidelity study that names its fidelity."""
    return f", rungs over {rec.fidelity} epochs" if rec.fidelity else ""


def _summary_markdown(rec: StudyRecord, reason: str) -> str:
    best = rec.best
    hit = f"{rec.hit_rate:.0%}" if rec.hit_rate is not None else "-"
    lines = [f"# Study {rec.study}", "", reason, "",
             "| | |", "|---|---|",
             f"| tuner | {rec.tuner}{_rungs_over(rec)} |",
             f"| trials | {len(rec.trials)} |",
             f"| stage seconds spent | {rec.spent:.1f} of {rec.budget:.0f} |",
             f"| seconds saved by reuse | {rec.saved_s:.1f} |",
             f"| cache hit rate (stage runs reused) | {hit} ({sum(x.n_reused for x in rec.trials)}"
             f" of {rec.stage_rows}) |"]
    if best is not None:
        params = ", ".join(f"{k}={round_sig(v)}" for k, v in
                           best.flat_params(rec.tuned_stages).items())
        lines.append(f"| best | trial {best.id}: {round_sig(best.objective)} ({params}) |")
    return "\n".join(lines)


def _publish_end(rec: StudyRecord, t: Any, keys: ArtifactKeys, progress_id: Any,
                 reason: str) -> None:
    """At the end of a study: the progress artifact says why, the summary artifact."""
    done = reason.startswith("finished")
    update_progress_artifact(progress_id, progress=100.0 if done else _percent(t.spent, t.budget),
                             description=f"study {rec.study}: {reason}")
    create_markdown_artifact(markdown=_summary_markdown(rec, reason), key=keys.summary,
                             description=f"Study {rec.study}: spent, saved, hit rate, best")


REUSE_COLORS = ("#e45756", "#f58518", "#eeca3b", "#72b7b2", "#54a24b")  # 0..4 stages reused


def plot_progress(result: StudyResult, path: Path) -> Path:
    """Every trial's objective and the best so far against spent budget (PNG).

    Each trial is a point at the budget spent after it, colored by how many of
    its stages were reused from the cache (a fully cached trial costs almost
    nothing, so it sits right after the trial before it) and labeled with its id.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rec = StudyRecord(study=result.study, tuner=result.tuner, budget=result.budget,
                      trials=result.trials, stage_names=result.stage_names)
    fig = Figure(figsize=(7, 4.2), constrained_layout=True)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    best = rec.best_so_far()
    steps = [(x.spent, b) for x, b in zip(rec.trials, best, strict=True) if b is not None]
    if steps:
        ax.step([x for x, _ in steps], [b for _, b in steps], where="post", color="#4c78a8",
                lw=1.5, zorder=2, label="best so far")
    n_stages = max((len(x.stages) for x in rec.trials), default=4)
    for x in rec.trials:
        if x.objective is None:
            continue
        color = REUSE_COLORS[min(x.n_reused, len(REUSE_COLORS) - 1)]
        ax.scatter([x.spent], [x.objective], s=42, color=color, edgecolor="#333", lw=0.6,
                   marker="D" if x.n_reused == len(x.stages) else "o", zorder=3)
        ax.annotate(str(x.id), (x.spent, x.objective), xytext=(4, 4),
                    textcoords="offset points", fontsize=7, color="#444")
    handles = [Line2D([], [], color="#4c78a8", lw=1.5, label="best so far")]
    handles += [Line2D([], [], ls="", marker="D" if k == n_stages else "o", markersize=6,
                       color=REUSE_COLORS[min(k, len(REUSE_COLORS) - 1)], markeredgecolor="#333",
                       label=f"{k}/{n_stages} stages reused")
                for k in sorted({x.n_reused for x in rec.trials})]
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    ax.set_xlabel("budget spent (stage seconds)")
    ax.set_ylabel("objective (each trial) / best so far")
    ax.set_title(f"study {rec.study} ({rec.tuner}): {len(rec.trials)} trials, "
                 f"{rec.saved_s:.0f} s saved by reuse", fontsize=10)
    ax.grid(alpha=0.3)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
