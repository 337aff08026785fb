"""The backend each store URL gets, and the S3 settings that bound an outage."""

from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cache.store import (
    S3_ATTEMPTS,
    S3_CONFIG,
    ArtifactStore,
    StoreError,
    _LocalBackend,
    _RemoteBackend,
    _S3Backend,
)

REPO = Path(__file__).resolve().parents[2]


def test_backend_is_chosen_by_protocol(tmp_path):
    assert type(ArtifactStore(tmp_path / "a")._backend) is _LocalBackend
    assert type(ArtifactStore(f"file://{tmp_path}/a")._backend) is _LocalBackend
    assert type(ArtifactStore("memory://mt-backends/x")._backend) is _RemoteBackend
    for url in ("s3://bucket/prefix", "s3a://bucket/prefix"):
        assert type(ArtifactStore(url)._backend) is _S3Backend


def test_s3_store_gets_bounded_timeouts_and_retries(monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    store = ArtifactStore("s3://bucket/prefix", {"config_kwargs": {"read_timeout": 7}})
    assert store.fs.retries == 1  # s3fs's loops nest; botocore's retries are the only ones
    assert store._options["config_kwargs"] == {**S3_CONFIG, "read_timeout": 7}
    assert S3_CONFIG["retries"] == {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"}
    assert store._options["max_concurrency"] == 1
    assert store._options["use_listings_cache"] is False
    assert store._options["endpoint_url"] == "http://127.0.0.1:9"
    assert store.storage_options == {"config_kwargs": {"read_timeout": 7}}  # as given


def test_local_put_is_a_rename(tmp_path):
    store = ArtifactStore.open(tmp_path / "s")
    store.put_json("studies/a.json", {"v": 1})
    assert sorted(p.name for p in (tmp_path / "s" / "studies").iterdir()) == ["a.json"]


def test_importing_the_cache_loads_no_prefect():
    """Only cache.prefect_policy and cache.locks import Prefect (see cache/__init__.py)."""
    code = ("import sys, cache, cache.errors, cache.keys, cache.leases, cache.lock_setting, "
            "cache.records, cache.store; assert 'prefect' not in sys.modules, 'prefect loaded'")
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


class _HeadOnly(http.server.BaseHTTPRequestHandler):
    """Answers HEAD (an object of 10 bytes), then goes silent on GET: a server
    paused between the two requests of one read."""

    def do_HEAD(self) -> None:  # noqa: N802 (http.server's naming)
        self.send_response(200)
        for name, value in (("Content-Length", "10"), ("ETag", '"e"'),
                            ("Last-Modified", "Thu, 03 Dec 2026 00:00:00 GMT")):
            self.send_header(name, value)
        self.end_headers()

    def do_GET(self) -> None:  # noqa: N802
        self.server.stop.wait(60)  # type: ignore[attr-defined]

    def do_PUT(self) -> None:  # noqa: N802  (never answers, not even "100 Continue")
        self.server.stop.wait(60)  # type: ignore[attr-defined]

    def log_message(self, *args: object) -> None:
        pass


def _paused_store(monkeypatch, read_timeout: float) -> tuple[ArtifactStore, Any]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HeadOnly)
    server.stop = threading.Event()  # type: ignore[attr-defined]
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    store = ArtifactStore(f"s3://mt-paused-{time.monotonic_ns()}/store", {
        "endpoint_url": f"http://127.0.0.1:{server.server_address[1]}",
        "config_kwargs": {"read_timeout": read_timeout, "connect_timeout": 1},
        "skip_instance_cache": True})
    return store, server


def test_an_s3_server_paused_mid_read_fails_it_after_s3_attempts_timeouts(monkeypatch):
    """A read gives up after S3_ATTEMPTS read timeouts. s3fs's own retry loops nest
    (cat_file retries a call that retries: 9 timeouts after a size request), which
    hung runs for minutes on a paused server."""
    read_timeout = 1
    store, server = _paused_store(monkeypatch, read_timeout)
    t0 = time.monotonic()
    try:
        with pytest.raises(StoreError, match="read manifest"):
            store.manifest("a" * 64)
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
    elapsed = time.monotonic() - t0
    # S3_ATTEMPTS timeouts plus botocore's backoff (< 2 s per retry), not 9 of them
    assert elapsed < S3_ATTEMPTS * read_timeout + 2 * (S3_ATTEMPTS - 1) + 1.5, elapsed


def test_a_write_to_a_paused_s3_server_ends_within_the_bound(monkeypatch):
    """A PUT waits for the server's "100 Continue" with no timeout of botocore's or
    aiohttp's: on a paused server it hung forever (a run stuck writing a record).
    Every S3 call has a hard deadline, S3_BOUND_S (here made 3 s)."""
    import cache.store

    monkeypatch.setattr(cache.store, "S3_BOUND_S", 3)
    store, server = _paused_store(monkeypatch, read_timeout=1)
    t0 = time.monotonic()
    try:
        with pytest.raises(StoreError, match=r"write record .* no answer from the S3 server"):
            store.write_record("a" * 64, b'{"x": 1}')
    finally:
        server.stop.set()  # type: ignore[attr-defined]
        server.shutdown()
    assert time.monotonic() - t0 < 3 + 2, time.monotonic() - t0
