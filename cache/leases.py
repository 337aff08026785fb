"""Leases: what a running pipeline is using, so gc leaves it alone.

A run writes ``leases/<id>.json`` (the keys it reads or writes and an expiry)
before it looks anything up, renews it while it runs and deletes it when it
ends. gc removes no leased entry; a run killed with SIGKILL stops renewing, so
its lease lapses after ``ttl_s`` and blocks nothing for longer. Each lease is
its own object, written whole (object-store rules: no appends, no renames).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from cache.errors import StoreError
from cache.keys import check_key, is_key

if TYPE_CHECKING:
    from cache.store import ArtifactStore

__all__ = ["DEFAULT_TTL_S", "LEASES", "hold", "live_keys"]

LEASES = "leases"
DEFAULT_TTL_S = 300.0
log = logging.getLogger("memotune.cache")


def _doc(keys: list[str], ttl_s: float) -> dict[str, Any]:
    return {"keys": keys, "expires": time.time() + ttl_s}


@contextmanager
def hold(store: ArtifactStore, keys: Iterable[str], ttl_s: float = DEFAULT_TTL_S) -> Iterator[str]:
    """Lease keys for the duration of the block (renewed every ttl_s / 4)."""
    key_list = sorted({check_key(k) for k in keys})
    name = f"{LEASES}/{uuid.uuid4().hex}.json"
    store.put_json(name, _doc(key_list, ttl_s))
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(ttl_s / 4):
            try:
                store.put_json(name, _doc(key_list, ttl_s))
            except StoreError as e:  # the run itself meets the outage and says so
                if not stop.is_set():  # nor a word once the run has ended
                    log.warning("could not renew lease %s: %s", name, e)

    thread = threading.Thread(target=renew, name="memotune-lease", daemon=True)
    thread.start()
    store_failed = False
    try:
        yield name
    except StoreError:
        store_failed = True  # don't wait on a failing store again: the lease lapses
        raise
    finally:
        stop.set()
        if not store_failed:
            thread.join()
            try:
                store.delete_doc(name)
            except StoreError as e:
                log.warning("could not remove lease %s (it lapses by itself): %s", name, e)


def live_keys(docs: Iterable[Any], now: float | None = None) -> set[str]:
    """Keys under the leases among docs that have not lapsed (malformed docs protect nothing)."""
    now = time.time() if now is None else now
    keys: set[str] = set()
    for doc in docs:
        if not isinstance(doc, dict) or not isinstance(doc.get("expires"), int | float):
            continue
        if doc["expires"] >= now and isinstance(doc.get("keys"), list):
            keys.update(k for k in doc["keys"] if is_key(k))
    return keys
