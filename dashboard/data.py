"""Reading the store for the dashboard: read-only, and safe while a study writes to it.

Everything goes through cache.store.ArtifactStore (its listing and JSON-doc
reads, manifests from `ls()`, checks from `verify_all()`); nothing here
writes, creates a folder or fetches entry files into the local fetch cache.
A document that is missing, half-written, damaged or of an unknown shape is
skipped and named in `Snapshot.skipped`, never an error: a study that is
running rewrites its study.json after every trial, and gc may delete entries
between a listing and a read.
"""

from __future__ import annotations

import hashlib
import re
import time
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from cache.store import ArtifactStore, Manifest, StoreError
from flows.run_records import RunRecord, StudyRecord

__all__ = ["Snapshot", "fingerprint", "read_snapshot", "read_study", "study_names"]

_STUDY_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,80}")  # flows.study's rule


@dataclass
class Snapshot:
    """What the store holds right now, parsed into records."""

    studies: list[StudyRecord] = field(default_factory=list)
    runs: list[RunRecord] = field(default_factory=list)
    entries: list[Manifest] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # docs unreadable at this moment
    taken: float = field(default_factory=time.time)


def _ls(store: ArtifactStore, folder: str, detail: bool = False) -> list[Any]:
    try:
        return store.fs.ls(f"{store.root}/{folder}", detail=detail)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise StoreError(f"cannot list {folder} in store {store.url}: {e}") from None


def study_names(store: ArtifactStore) -> list[str]:
    """Names of the studies in the store (folders under studies/ with a valid name)."""
    names = (str(p).rstrip("/").rsplit("/", 1)[-1] for p in _ls(store, "studies"))
    return sorted(n for n in names if _STUDY_NAME.fullmatch(n))


def _doc(store: ArtifactStore, name: str, model: type, skipped: list[str]) -> Any:
    try:
        doc = store.get_json(name)
    except (StoreError, ValueError) as e:  # half-written or damaged JSON, an I/O hiccup
        skipped.append(f"{name}: {e}")
        return None
    if doc is None:  # deleted (or not written yet) between the listing and the read
        return None
    try:
        return model.model_validate(doc)
    except ValidationError as e:
        skipped.append(f"{name}: not a {model.__name__} ({e.error_count()} problems)")
        return None


def read_study(store: ArtifactStore, name: str, skipped: list[str] | None = None
               ) -> StudyRecord | None:
    if not _STUDY_NAME.fullmatch(name):
        return None
    return _doc(store, f"studies/{name}/study.json", StudyRecord,
                skipped if skipped is not None else [])


def read_snapshot(store: ArtifactStore, *, entries: bool = True, runs: bool = True
                  ) -> Snapshot:
    """Studies, run records and (optionally) committed entries, each read once."""
    snap = Snapshot()
    for name in study_names(store):
        rec = read_study(store, name, snap.skipped)
        if rec is not None:
            snap.studies.append(rec)
    if runs:
        for name in store.list_docs("runs"):
            rec = _doc(store, name, RunRecord, snap.skipped)
            if rec is not None:
                snap.runs.append(rec)
        snap.runs.sort(key=lambda r: r.ended or r.started or 0.0, reverse=True)
    if entries:
        snap.entries = store.ls()  # manifests that parse; uncommitted folders are not entries
    return snap


def fingerprint(store: ArtifactStore) -> str:
    """Changes whenever a run, a study or an entry is written or removed (listings only)."""
    h = hashlib.sha256()
    for info in sorted(_ls(store, "runs", detail=True), key=lambda i: i["name"]):
        h.update(f"{info['name']}:{info.get('size')}\n".encode())
    for name in study_names(store):
        try:
            info = store.fs.info(f"{store.root}/studies/{name}/study.json")
        except FileNotFoundError:
            continue
        except OSError:
            continue
        stamp = info.get("mtime") or info.get("LastModified") or info.get("ETag") or ""
        h.update(f"{name}:{info.get('size')}:{stamp}\n".encode())
    for name in sorted(map(str, _ls(store, "objects"))):
        h.update(f"{name}\n".encode())
    return h.hexdigest()[:16]
