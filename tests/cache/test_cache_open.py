"""Opening stores: accepted URL forms, fast clear failures, no leaked credentials."""

from __future__ import annotations

import socket
import time

import pytest

from cache.keys import redact
from cache.store import ArtifactStore, StoreError
from tests.storekit import record_uri


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # nothing listens once the socket is closed


def test_url_forms(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for url in (f"file://{tmp_path}/a", str(tmp_path / "a"), "a"):
        store = ArtifactStore.open(url)
        assert store.url == f"file://{tmp_path}/a" and store.root == f"{tmp_path}/a"
    assert (tmp_path / "a").is_dir()
    mem = ArtifactStore.open("memory://mt-url-forms/x")
    assert mem.url.startswith("memory://") and mem.root.endswith("mt-url-forms/x")
    assert ArtifactStore("s3://bucket/prefix/").url == "s3://bucket/prefix"
    assert (
        record_uri(ArtifactStore("s3://bucket/prefix"), "0" * 64)
        == "s3://bucket/prefix/prefect/" + "0" * 64
    )
    for bad, why in [("nosuchproto://x", "unsupported protocol 'nosuchproto'"),
                     ("ftp://host/x", "unsupported protocol 'ftp'"),
                     ("hdfs://nn/x", "unsupported protocol 'hdfs'"),
                     ("zip://a.zip", "unsupported protocol 'zip'"),
                     ("s3://", "no bucket or directory"), ("file://", "no bucket or directory"),
                     (" ", "empty or surrounded by spaces"), ("", "empty"),
                     (" /tmp/x", "surrounded by spaces")]:
        with pytest.raises(StoreError, match=why):
            ArtifactStore(bad)
    with pytest.raises(StoreError) as e:
        ArtifactStore("ftp://user:hunter2@host/x")
    assert "hunter2" not in str(e.value)


def test_s3_store_works_from_env_alone(s3_store_url, tmp_path):
    store = ArtifactStore.open(s3_store_url, cache_dir=tmp_path / "c")
    assert store.storage_options == {}
    store.put_json("studies/x.json", {"ok": True})
    assert store.get_json("studies/x.json") == {"ok": True}


def test_local_path_under_a_regular_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    url = f"file://{tmp_path}/afile/store"
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach store") as ei:
        ArtifactStore.open(url)
    assert url in str(ei.value) and time.monotonic() - t0 < 2
    with pytest.raises(StoreError, match="cannot reach store"):
        ArtifactStore.open(f"file://{tmp_path}/missing", create=False)


def test_unreachable_s3_endpoint_fails_fast(tmp_path):
    opts = {
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"endpoint_url": f"http://127.0.0.1:{_closed_port()}"},
    }
    t0 = time.monotonic()
    with pytest.raises(StoreError, match="cannot reach store") as ei:
        ArtifactStore.open("s3://somebucket/store", opts, cache_dir=tmp_path)
    assert time.monotonic() - t0 < 5
    assert "s3://somebucket/store" in str(ei.value)
    assert "Could not connect" in str(ei.value)


def test_missing_bucket(moto_server, s3_store_url, tmp_path):
    with pytest.raises(StoreError, match="bucket memotune-nope-123 does not exist") as ei:
        ArtifactStore.open("s3://memotune-nope-123/store", cache_dir=tmp_path)
    assert "s3://memotune-nope-123/store" in str(ei.value)


def test_no_credentials_in_messages(tmp_path):
    secret, key_id, password = "wJalrXUtnFEMI-very-secret", "AKIAEXAMPLEKEYID", "hunter2pw"
    opts = {
        "key": key_id,
        "secret": secret,
        "client_kwargs": {"endpoint_url": f"http://user:{password}@127.0.0.1:{_closed_port()}"},
    }
    with pytest.raises(StoreError) as ei:
        ArtifactStore.open("s3://somebucket/store", opts, cache_dir=tmp_path)
    text = str(ei.value) + repr(ei.value) + str(ei.value.__cause__) + str(ei.value.__context__)
    for leaked in (secret, key_id, password):
        assert leaked not in text
    assert "s3://somebucket/store" in str(ei.value)
    store = ArtifactStore(f"s3://somebucket/store?X-Amz-Credential={secret}", opts)
    assert secret not in repr(store)

    url = f"file://{tmp_path}/f/store"
    (tmp_path / "f").write_text("x")
    with pytest.raises(StoreError) as ei:
        ArtifactStore.open(url, {"token": "tok-abcdef-123"})
    assert "tok-abcdef-123" not in str(ei.value)


def test_redact():
    text = "GET https://AKID:s3cr3t@host/p?X-Amz-Credential=abc&x=1 password=pw123 key=topsecret"
    out = redact(text, secrets=["literal-secret"])
    for leaked in ("AKID", "s3cr3t", "abc&", "pw123", "topsecret"):
        assert leaked not in out
    assert "https://***@host/p" in out and "x=1" in out
    assert redact("uses literal-secret here", ["literal-secret"]) == "uses *** here"
