"""memotune's cache: content keys and the fsspec artifact store (no ML, no Prefect)."""

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
from cache.errors import CorruptEntryError, EntryNotFoundError, StoreError
from cache.store import (
    ArtifactStore,
    CorruptEntryError,
    EntryNotFoundError,
    FileRecord,
    GcReport,
    Manifest,
    StoreError,
)

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
