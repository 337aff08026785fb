"""What each page shows, computed from a Snapshot: plain data, no HTML.

- `study_rows`: one row per study (tuner, trials, best, spent, saved, hit rate).
- `entry_rows` + `cache_totals`: one row per committed entry with its usage
  (hits, last used, seconds saved, the runs and studies that used it).
- `reuse_tree`: a study's trials as paths through the entries they used, one
  node per distinct stage key.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from cache.store import Manifest
from dashboard.data import Snapshot
from flows.run_records import PIPELINE_STAGES, RunRecord, StageRun, StudyRecord, Trial

__all__ = ["CacheTotals", "EntryRow", "StudyRow", "TreeNode", "Usage", "cache_totals",
           "entry_rows", "reuse_tree", "study_rows", "usages"]

RUNNING_QUIET_S = 3600.0  # a "running" study with no trial for this long is shown as stalled


@dataclass
class StudyRow:
    rec: StudyRecord
    state: str  # running | stalled | finished | failed | -

    @property
    def name(self) -> str:
        return self.rec.study


def study_state(rec: StudyRecord, now: float | None = None) -> str:
    now = time.time() if now is None else now
    if rec.status == "running":
        quiet = now - (rec.updated or 0.0)
        return "running" if quiet < RUNNING_QUIET_S else "stalled"
    return rec.status or "-"


def study_rows(snap: Snapshot, now: float | None = None) -> list[StudyRow]:
    rows = [StudyRow(rec, study_state(rec, now)) for rec in snap.studies]
    return sorted(rows, key=lambda r: r.rec.updated or 0.0, reverse=True)


@dataclass(frozen=True)
class Usage:
    """One stage row of one run: an entry computed or reused, when, by whom."""

    stage: StageRun
    when: float | None
    run_id: str | None  # Prefect flow run id, when known
    run_name: str | None
    study: str | None = None
    trial: int | None = None


def usages(snap: Snapshot) -> list[Usage]:
    """Every recorded stage row: from run records, plus trials whose run has no record.

    A trial's pipeline run writes its own run record, so trials are matched to
    runs by flow run id and counted once; a trial without one (a store from
    before run records) still counts.
    """
    trial_of: dict[str, tuple[str, int]] = {}
    out: list[Usage] = []
    for study in snap.studies:
        for t in study.trials:
            if t.flow_run_id:
                trial_of[t.flow_run_id] = (study.study, t.id)
    recorded = {r.run for r in snap.runs}
    for r in snap.runs:
        study, trial = trial_of.get(r.run, (None, None))
        out += [Usage(s, r.ended, r.flow_run_id, r.flow_run_name, study, trial) for s in r.stages]
    for study in snap.studies:
        for t in study.trials:
            if t.flow_run_id in recorded:
                continue
            out += [Usage(s, study.updated, t.flow_run_id, t.flow_run, study.study, t.id)
                    for s in t.stages]
    return out


@dataclass
class EntryRow:
    m: Manifest
    hits: int = 0  # stage runs that reused this entry
    computed: int = 0  # stage runs that computed it (1, or more after a gc)
    saved_s: float = 0.0
    last_used: float | None = None
    runs: dict[str, str | None] = field(default_factory=dict)  # run label -> flow run id
    studies: set[str] = field(default_factory=set)
    problems: list[str] | None = None  # verify result: None = not checked, [] = sound

    @property
    def key(self) -> str:
        return self.m.key


def entry_rows(snap: Snapshot, verified: dict[str, list[str]] | None = None) -> list[EntryRow]:
    rows = {m.key: EntryRow(m, last_used=m.created) for m in snap.entries}
    for u in usages(snap):
        row = rows.get(u.stage.key)
        if row is None:  # an entry gc has removed since
            continue
        if u.stage.cached:
            row.hits += 1
            row.saved_s += u.stage.saved_s
        else:
            row.computed += 1
        if u.when is not None and (row.last_used is None or u.when > row.last_used):
            row.last_used = u.when
        label = u.run_name or (u.run_id or "run")[:8]
        if u.study is not None:
            label = f"{u.study} #{u.trial}"
            row.studies.add(u.study)
        row.runs[label] = u.run_id
    if verified is not None:
        for key, row in rows.items():
            row.problems = list(verified.get(key, []))
    order = {s: i for i, s in enumerate(PIPELINE_STAGES)}
    return sorted(rows.values(), key=lambda r: (order.get(r.m.stage, 99), -r.m.created))


@dataclass
class CacheTotals:
    entries: int
    bytes: int
    compute_s: float
    hits: int
    saved_s: float  # by reuse of the entries still in the store
    saved_all_s: float  # by every recorded reuse, including of entries removed since
    gone: int  # keys that runs used and the store no longer has


def cache_totals(rows: list[EntryRow], snap: Snapshot) -> CacheTotals:
    present = {r.key for r in rows}
    used = usages(snap)
    return CacheTotals(
        entries=len(rows), bytes=sum(r.m.total_bytes for r in rows),
        compute_s=sum(r.m.compute_s for r in rows), hits=sum(r.hits for r in rows),
        saved_s=sum(r.saved_s for r in rows),
        saved_all_s=sum(u.stage.saved_s for u in used),
        gone=len({u.stage.key for u in used} - present))


@dataclass
class TreeNode:
    """One distinct stage key of a study's trials."""

    stage: str
    key: str
    depth: int
    parent: TreeNode | None = None
    children: list[TreeNode] = field(default_factory=list)
    trials: list[int] = field(default_factory=list)  # trials whose path runs through it
    computed_by: list[int] = field(default_factory=list)
    reused_by: list[int] = field(default_factory=list)
    compute_s: float = 0.0  # seconds it took when computed (in this study)
    saved_s: float = 0.0  # seconds its reuses saved
    y: float = 0.0  # layout: row, in leaf units

    @property
    def id(self) -> str:
        return f"{self.depth}-{self.key}"


def reuse_tree(trials: Iterable[Trial]) -> tuple[list[TreeNode], list[list[TreeNode]]]:
    """Roots, and nodes per depth (column), laid out: leaves in order, parents centered."""
    by_id: dict[str, TreeNode] = {}
    roots: list[TreeNode] = []
    columns: list[list[TreeNode]] = []
    for t in trials:
        parent: TreeNode | None = None
        for depth, s in enumerate(t.stages):
            node = by_id.get(f"{depth}-{s.key}")
            if node is None:
                node = TreeNode(s.name, s.key, depth, parent)
                by_id[node.id] = node
                (parent.children if parent is not None else roots).append(node)
                while len(columns) <= depth:
                    columns.append([])
                columns[depth].append(node)
            node.trials.append(t.id)
            if s.cached:
                node.reused_by.append(t.id)
                node.saved_s += s.saved_s
            else:
                node.computed_by.append(t.id)
                node.compute_s = max(node.compute_s, s.compute_s)
            parent = node
    row = 0

    def place(n: TreeNode) -> None:
        nonlocal row
        if not n.children:
            n.y = float(row)
            row += 1
            return
        for c in n.children:
            place(c)
        n.y = (n.children[0].y + n.children[-1].y) / 2

    for r in roots:
        place(r)
    return roots, columns


def runs_of(snap: Snapshot, limit: int = 20) -> list[RunRecord]:
    """The most recent run records (newest first)."""
    return snap.runs[:limit]
