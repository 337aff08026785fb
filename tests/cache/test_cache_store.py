"""ArtifactStore behaviour on file://, memory:// and real S3 (moto server)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import fsspec
import pytest
from storetools import key_of, make_dir, read_tree

from cache.store import (
    ArtifactStore,
    CorruptEntryError,
    EntryNotFoundError,
    Manifest,
    StoreError,
)
from tests.storekit import record_uri

K = key_of(1)
FILES = {
    "model.safetensors": os.urandom(300_000),
    "config.json": b'{"hidden": 8}',
    "tok/deep/vocab.txt": b"a\nb\n",
    "empty.bin": b"",
}


def commit(store: ArtifactStore, key: str, root: Path, files=FILES, **kw) -> Manifest:
    kw = {"stage": "finetune", "meta": {"metrics": {"acc": 0.5}}, "compute_s": 12.5, **kw}
    return store.commit(key, make_dir(root, files), **kw)


def store_path(store: ArtifactStore, *parts: str) -> str:
    return "/".join((store.root, *parts))


def test_commit_then_fetch_round_trip(store, tmp_path):
    assert not store.has(K) and store.manifest(K) is None
    m = commit(store, K, tmp_path / "out")
    assert store.has(K)
    assert store.manifest(K) == m
    assert m.key == K and m.stage == "finetune" and m.compute_s == 12.5
    assert m.meta == {"metrics": {"acc": 0.5}}
    assert sorted(f.name for f in m.files) == sorted(FILES)
    assert m.total_bytes == sum(len(v) for v in FILES.values())
    assert Manifest.from_json(m.to_json()) == m

    got = store.fetch(K)
    assert read_tree(got) == FILES
    assert store.fetch(K) == got  # local: the store's own dir; remote: the reused download
    if not store.url.startswith("file://"):
        assert got.is_relative_to(store.cache_dir)
    dest = store.fetch(K, tmp_path / "dest")
    assert dest == tmp_path / "dest" and read_tree(dest) == FILES
    assert store.read_bytes(K, "tok/deep/vocab.txt") == b"a\nb\n"
    with pytest.raises(EntryNotFoundError):
        store.read_bytes(K, "nope.txt")

    assert store.verify(K) == []
    assert store.verify_all() == {K: []}
    assert [e.key for e in store.ls()] == [K]


def test_empty_entry(store, tmp_path):
    commit(store, K, tmp_path / "empty", files={})
    assert store.has(K)
    got = store.fetch(K)
    assert got.is_dir() and read_tree(got) == {}


def test_existing_manifest_is_not_overwritten(store, tmp_path):
    first = commit(store, K, tmp_path / "a")
    again = commit(
        store, K, tmp_path / "b", files={"other.txt": b"different"}, meta={"x": 1}, compute_s=1
    )
    assert again == first
    assert store.manifest(K) == first
    assert store.read_bytes(K, "config.json") == FILES["config.json"]


def test_missing_entry(store, tmp_path):
    with pytest.raises(EntryNotFoundError, match="no entry") as ei:
        store.fetch(K)
    assert isinstance(ei.value, KeyError) and store.url in str(ei.value)
    assert store.verify(K) == [f"no entry {K}"]
    assert store.ls() == [] and store.verify_all() == {}


class FailingStore(ArtifactStore):
    """Injects an I/O failure after the first uploaded file (nothing else is faked)."""

    uploads = 0

    def _upload(self, src, dst):
        if self.uploads >= 1:
            raise OSError("injected: disk vanished")
        self.uploads += 1
        return super()._upload(src, dst)


def test_crash_mid_commit_leaves_only_garbage(store_url, tmp_path):
    store = FailingStore.open(store_url, cache_dir=tmp_path / "c")
    with pytest.raises(StoreError, match="injected") as ei:
        commit(store, K, tmp_path / "out")
    assert store.url in str(ei.value)
    assert not store.has(K) and store.manifest(K) is None
    assert store.verify(K) == ["no manifest (uncommitted garbage)"]
    assert store.verify_all() == {K: ["no manifest (uncommitted garbage)"]}
    assert store.gc().removed_garbage == []  # young: could be a commit in flight
    report = store.gc(grace_s=0)
    assert report.removed_garbage == [K] and report.freed_bytes > 0
    assert store.verify_all() == {}
    # a retry commits cleanly afterwards
    ok = ArtifactStore.open(store_url, cache_dir=tmp_path / "c")
    commit(ok, K, tmp_path / "out")
    assert ok.verify(K) == []


def test_bad_inputs_rejected_before_any_upload(store, tmp_path):
    src = make_dir(tmp_path / "out", {"a.txt": b"a"})
    with pytest.raises(TypeError):
        store.commit(K, src, stage="s", meta={"obj": object()}, compute_s=1)
    with pytest.raises(ValueError):
        store.commit(K, src, stage="s", meta={"x": float("nan")}, compute_s=1)
    with pytest.raises(ValueError):
        store.commit(K, tmp_path / "missing", stage="s", meta={}, compute_s=1)
    (src / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="regular file"):
        store.commit(K, src, stage="s", meta={}, compute_s=1)
    assert store.verify_all() == {}
    for bad in ("../" + K[3:], key_of(0xABC).upper(), "x"):
        with pytest.raises(ValueError):
            store.has(bad)
        with pytest.raises(ValueError):
            store.commit(bad, src, stage="s", meta={}, compute_s=1)


def test_corrupted_file_is_detected(store, tmp_path):
    commit(store, K, tmp_path / "out")
    data = bytearray(FILES["model.safetensors"])
    data[1000] ^= 0xFF  # same size, different bytes
    store.fs.pipe_file(store_path(store, "objects", K, "files", "model.safetensors"), bytes(data))
    store.fs.pipe_file(store_path(store, "objects", K, "files", "config.json"), b"{}")
    problems = store.verify(K)
    assert any("model.safetensors" in p and "sha256" in p for p in problems)
    assert any("config.json" in p and "size" in p for p in problems)
    assert store.verify_all() == {K: problems}
    with pytest.raises(CorruptEntryError) as ei:
        store.fetch(K)
    err = ei.value
    assert err.key == K and err.file in ("config.json", "model.safetensors")
    assert K in str(err) and err.file in str(err) and store.url in str(err)
    with pytest.raises(CorruptEntryError):
        store.fetch(K, tmp_path / "dest")
    with pytest.raises(CorruptEntryError):
        store.read_bytes(K, "config.json")
    assert store.fetch(K, tmp_path / "unverified", verify=False).is_dir()


def test_missing_and_extra_files_are_reported(store, tmp_path):
    commit(store, K, tmp_path / "out")
    store.fs.rm(store_path(store, "objects", K, "files", "config.json"))
    store.fs.pipe_file(store_path(store, "objects", K, "files", "stray.bin"), b"?")
    assert store.verify(K) == ["config.json: missing", "stray.bin: not in the manifest"]
    with pytest.raises(CorruptEntryError, match="missing"):
        store.fetch(K, tmp_path / "dest")


@pytest.mark.parametrize(
    "text",
    [
        b"{not json",
        b"[]",
        b'{"key": "x"}',
        None,  # a valid manifest whose file name escapes the entry
    ],
)
def test_bad_manifest_is_corrupt_not_trusted(store, tmp_path, text):
    m = commit(store, K, tmp_path / "out")
    if text is None:
        doc = json.loads(m.to_json())
        doc["files"][0]["name"] = "../../../etc/passwd"
        text = json.dumps(doc).encode()
    store.fs.pipe_file(store_path(store, "objects", K, "manifest.json"), text)
    with pytest.raises(CorruptEntryError) as ei:
        store.manifest(K)
    assert ei.value.key == K and ei.value.file == "manifest.json"
    assert store.verify(K)[0].startswith("manifest unreadable")
    assert store.ls() == []


def test_manifest_for_another_key_is_corrupt(store, tmp_path):
    m = commit(store, K, tmp_path / "out")
    store.fs.pipe_file(
        store_path(store, "objects", key_of(2), "manifest.json"), m.to_json().encode()
    )
    with pytest.raises(CorruptEntryError, match="manifest is for key"):
        store.manifest(key_of(2))


def test_delete_removes_entry_and_prefect_record(store, tmp_path):
    commit(store, K, tmp_path / "out")
    commit(store, key_of(2), tmp_path / "out2")
    with fsspec.open(record_uri(store, K), "wb") as f:  # what Prefect's result storage writes
        f.write(b'{"result": "..."}')
    assert record_uri(store, K) == store.fs.unstrip_protocol(store_path(store, "prefect", K))
    assert store.fs.exists(store_path(store, "prefect", K))
    store.delete(K)
    assert not store.has(K) and store.manifest(K) is None
    assert not store.fs.exists(store_path(store, "prefect", K))
    assert not store.fs.exists(store_path(store, "objects", K))
    assert list(store.verify_all()) == [key_of(2)]
    with pytest.raises(EntryNotFoundError):
        store.fetch(K)
    store.delete(K)  # idempotent
    assert store.has(key_of(2))


def test_fetch_hands_out_files_without_copying_twice(store, tmp_path):
    commit(store, K, tmp_path / "out")
    first = store.fetch(K)
    if store.url.startswith("file://"):  # local stores hand out their own files: no copy
        assert str(first).startswith(store.root) and read_tree(first) == FILES
        return
    # The manifest is unchanged, so the second fetch must not read the files again.
    store.fs.rm(store_path(store, "objects", K, "files"), recursive=True)
    assert store.fetch(K) == first and read_tree(first) == FILES


def test_recommit_after_delete_refreshes_fetched_copy(store, tmp_path):
    commit(store, K, tmp_path / "a", files={"w.bin": b"old"})
    assert read_tree(store.fetch(K)) == {"w.bin": b"old"}
    store.delete(K)
    commit(store, K, tmp_path / "b", files={"w.bin": b"new!"})
    assert read_tree(store.fetch(K)) == {"w.bin": b"new!"}


def test_ls_newest_first(store, tmp_path):
    for i in (1, 2, 3):
        commit(store, key_of(i), tmp_path / f"o{i}", files={"f": b"x" * i})
    assert [m.key for m in store.ls()] == [key_of(3), key_of(2), key_of(1)]


def test_json_docs(store):
    doc = {"trials": [{"lr": 1e-5, "ok": True}], "name": "ü"}
    store.put_json("studies/demo/state.json", doc)
    assert store.get_json("studies/demo/state.json") == doc
    store.put_json("studies/demo/state.json", {"v": 2})
    assert store.get_json("studies/demo/state.json") == {"v": 2}
    assert store.get_json("studies/other.json") is None
    bad_names = [
        "",
        "../x.json",
        "studies/../../x",
        "/abs.json",
        "Studies/x.json",
        "studies\\x.json",
        "studies//x.json",
        "studies/./x.json",
        "studies/",
        f"objects/{K}/manifest.json",
        f"prefect/{K}",
        "a b.json",
    ]
    for name in bad_names:
        with pytest.raises(ValueError):
            store.put_json(name, {})
        with pytest.raises(ValueError):
            store.get_json(name)
    with pytest.raises(ValueError):
        store.put_json("studies/nan.json", {"x": float("nan")})
    store.fs.pipe_file(store_path(store, "studies", "broken.json"), b"{oops")
    with pytest.raises(StoreError, match="broken.json"):
        store.get_json("studies/broken.json")


class InterleavedStore(ArtifactStore):
    """Runs another process's whole fetch while this one is still downloading."""

    during_download = None

    def _download(self, m, target, verify):
        super()._download(m, target, verify)
        if (hook := self.during_download) is not None:
            self.during_download = None
            hook()


@pytest.mark.parametrize("store_url", ["memory"], indirect=True)
def test_a_concurrent_fetch_keeps_the_copy_others_are_reading(store_url, tmp_path):
    """Two workers on one host fetch the same entry at once (a parallel study whose
    trials share an intermediate stage): the one that finishes second must not move
    the first one's copy away while the first one reads it."""
    cache = tmp_path / "shared-fetch-cache"
    first = ArtifactStore.open(store_url, cache_dir=cache)
    second = InterleavedStore.open(store_url, cache_dir=cache)
    commit(first, K, tmp_path / "out")
    seen: dict[str, object] = {}

    def first_fetches_and_reads():
        got = first.fetch(K)
        seen["dir"], seen["inode"] = got, (got / "model.safetensors").stat().st_ino

    second.during_download = first_fetches_and_reads
    got = second.fetch(K)
    assert got == seen["dir"] and read_tree(got) == FILES
    assert (got / "model.safetensors").stat().st_ino == seen["inode"], "first copy was replaced"
    assert [p.name for p in got.parent.parent.iterdir()] == [K]  # no temporary or stale copy
