"""The Prefect side of the cache: a cache policy whose key IS the stage key.

Prefect's own input hashing is slow on big inputs and its default policy
includes the run id, so stage tasks take the precomputed content key as an
input and this policy returns it unchanged.

Prefect keeps a result record per key and, on a hit, loads it with whatever
serializer the record's own metadata names (pickle included). `StoreRecords`
is the result storage that stands between the two: it writes records beside
their entries (``prefect/<key>``, only after the entry's manifest) and, on
read, answers only for a sound entry with a sound JSON record, and then with a
record it builds itself from the entry's manifest, always JSON. A missing or
damaged record or manifest reads as "no record": Prefect sees a miss and the
stage is served from its manifest or recomputed, and the record rewritten.
Failure records (Prefect names them by a uuid, not a content key) are not
written to the store at all.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext
from prefect.exceptions import ObjectAlreadyExists
from prefect.filesystems import WritableFileSystem
from prefect.locking.protocol import LockManager
from prefect.serializers import JSONSerializer
from prefect.transactions import IsolationLevel
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from cache.errors import CorruptEntryError
from cache.keys import check_key, is_key
from cache.records import DamagedRecordError, check_record
from cache.store import ArtifactStore, Manifest

__all__ = [
    "StageKeyPolicy", "StageOutput", "StoreRecords", "result_storage", "stage_output",
    "stage_policy",
]


class StageOutput(BaseModel):
    """What a stage task returns, hit or miss: small JSON, recorded by Prefect.

    `fetch_s`: seconds spent fetching each upstream entry (a miss only);
    `reused`: the entry was committed already (by a run that died before
    Prefect's record), so nothing was computed.
    """

    model_config = ConfigDict(extra="forbid")

    stage: str
    key: str
    uri: str
    metrics: dict[str, float] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)
    compute_s: float
    fetch_s: dict[str, float] = Field(default_factory=dict)
    reused: bool = False
    # a miss that continued from a checkpoint prefix: the boundary's recorded compute
    # seconds (reused), its fetch is in fetch_s as `<stage>@epoch<e>`
    resumed_s: float = 0.0


def stage_output(store: ArtifactStore, manifest: Manifest, **extra: Any) -> StageOutput:
    """The StageOutput of a committed entry."""
    return StageOutput(stage=manifest.stage, key=manifest.key, uri=store.entry_uri(manifest.key),
                       metrics=manifest.meta.get("metrics", {}),
                       meta=manifest.meta.get("meta", {}), compute_s=manifest.compute_s, **extra)


RECENT_S = 2.0  # how long a built record answers Prefect's repeated asks for it
_recent: dict[tuple[str, str], tuple[float, bytes]] = {}  # (store URL, key) -> (built, record)


class StoreRecords(WritableFileSystem):
    """Prefect result storage on the store's prefect/ folder, served from manifests."""

    _block_type_name = "memotune store records"
    store_url: str  # credentials come from the environment, never from a saved block
    _store: ArtifactStore | None = PrivateAttr(default=None)

    @property
    def store(self) -> ArtifactStore:
        if self._store is None:
            self._store = ArtifactStore(self.store_url)
        return self._store

    def record_for(self, key: str) -> bytes:
        """A fresh JSON record of key's StageOutput; FileNotFoundError unless all is sound.

        Prefect asks twice per hit (exists, then read) right after memotune's own
        check (`is_hit`): the record built by the first ask serves the others for
        RECENT_S, so a hit costs one record read and one manifest read.
        """
        if not is_key(key):
            raise FileNotFoundError(f"no result record {key!r} (only content keys have one)")
        recent = _recent.get((self.store_url, key))
        if recent is not None and time.monotonic() - recent[0] < RECENT_S:
            return recent[1]
        data = self.store.read_record(key)
        if data is None:
            raise FileNotFoundError(f"no result record for {key}")
        try:
            check_record(data, key)
            manifest = self.store.manifest(key)
        except (DamagedRecordError, CorruptEntryError) as e:
            raise FileNotFoundError(f"{e}; treated as a miss") from None
        if manifest is None:
            raise FileNotFoundError(f"result record {key} has no entry; treated as a miss")
        record = ResultRecord(metadata=ResultRecordMetadata(storage_key=key,
                                                            serializer=JSONSerializer()),
                              result=stage_output(self.store, manifest).model_dump(mode="json"))
        data = record.serialize()
        _recent[(self.store_url, key)] = (time.monotonic(), data)
        return data

    def is_hit(self, key: str) -> bool:
        """Whether Prefect will find key's record sound (and Cached the task)."""
        try:
            self.record_for(key)
        except FileNotFoundError:
            return False
        return True

    def forget(self, key: str) -> None:
        """Drop a recently built record: its entry was just deleted."""
        _recent.pop((self.store_url, key), None)

    def read_path(self, path: str, **_: Any) -> bytes:
        return self.record_for(path)

    async def aread_path(self, path: str) -> bytes:
        return self.record_for(path)

    def write_path(self, path: str, content: bytes, **_: Any) -> str:
        self.forget(path)
        if is_key(path):  # failure records (uuid names) stay out of the store
            self.store.write_record(path, content)
        return path

    async def awrite_path(self, path: str, content: bytes) -> str:
        return self.write_path(path, content)


@dataclass
class StageKeyPolicy(CachePolicy):
    """Cache key = the task input named `key_input` (a content key from cache.keys)."""

    key_input: str = "key"

    def compute_key(self, task_ctx: TaskRunContext, inputs: dict[str, Any],
                    flow_parameters: dict[str, Any], **kwargs: Any) -> str | None:
        key = check_key(inputs[self.key_input])
        # Prefect 3 caches on the client and never fills TaskRun.cache_key; the server
        # records it from the task run's state events, so the UI shows "Cache Key".
        if task_ctx is not None and task_ctx.task_run is not None:
            task_ctx.task_run.cache_key = key
        return key


_saved: dict[str, StoreRecords] = {}


def result_storage(store: ArtifactStore) -> StoreRecords:
    """Where Prefect reads and writes result records: beside the entries, guarded.

    Prefect accepts only saved blocks as task result storage, so the block is
    saved once per store URL, named after the URL's hash; a process loads it
    (one request) rather than saving it again.
    """
    block = _saved.get(store.url)
    if block is None:
        name = "memotune-store-" + hashlib.sha256(store.url.encode()).hexdigest()[:16]
        block = _load(name, store.url) or _save(name, store.url)
        _saved[store.url] = block
    return block


def _load(name: str, store_url: str) -> StoreRecords | None:
    try:
        block = StoreRecords.load(name)
    except (ValueError, ValidationError):  # not saved yet, or saved by an older schema
        return None
    return block if block.store_url == store_url else None


def _save(name: str, store_url: str) -> StoreRecords:
    block = StoreRecords(store_url=store_url)
    for attempt in range(5):
        try:
            block.save(name, overwrite=True)
            return block
        except ObjectAlreadyExists:  # another run registered the type or block just now
            if attempt == 4:
                raise
            time.sleep(0.2 * (attempt + 1))
    return block


def stage_policy(locks: LockManager | None) -> StageKeyPolicy:
    """SERIALIZABLE + locks (cache.locks): concurrent runs of one key compute it once.

    None: no lock, for a stage whose sound record was just seen (a hit only
    reads; gc leaves a running pipeline's entries alone, see cache.leases).
    """
    if locks is None:
        return StageKeyPolicy().configure(isolation_level=IsolationLevel.READ_COMMITTED)
    return StageKeyPolicy().configure(isolation_level=IsolationLevel.SERIALIZABLE,
                                      lock_manager=locks)
