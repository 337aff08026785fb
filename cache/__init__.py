"""memotune's cache: content keys, the fsspec artifact store, leases and record checks.

No ML here, and no Prefect outside prefect_policy.py and locks.py (the Prefect glue).
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
