"""memotune's cache: content keys, the fsspec artifact store, leases and record checks.

No ML here. Prefect is confined to the Prefect glue, cache.prefect_policy (cache
policy and result storage) and cache.locks (lock managers), which load it when
they are imported; this package and its other modules never do, so planning and
the CLI's early checks (cache.lock_setting) run before Prefect is imported.
"""

from cache.errors import CorruptEntryError, EntryNotFoundError, StoreError
from cache.keys import (
    DataSourceError,
    canonical_json,
    canonicalize,
    check_key,
    fingerprint_uris,
    is_key,
    redact,
    source_hash,
    stage_key,
)
from cache.store import ArtifactStore, FileRecord, GcReport, Manifest

__all__ = [
    "ArtifactStore",
    "CorruptEntryError",
    "DataSourceError",
    "EntryNotFoundError",
    "FileRecord",
    "GcReport",
    "Manifest",
    "StoreError",
    "canonical_json",
    "canonicalize",
    "check_key",
    "fingerprint_uris",
    "is_key",
    "redact",
    "source_hash",
    "stage_key",
]
