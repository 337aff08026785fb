"""Where a store keeps what tests plant or look at directly (the store itself never
hands these out: Prefect reaches records through cache.prefect_policy)."""

from __future__ import annotations

from cache.store import ArtifactStore


def record_uri(store: ArtifactStore, key: str) -> str:
    """URL of Prefect's result record for key (prefect/<key>)."""
    return store.fs.unstrip_protocol(store._record_path(key))
