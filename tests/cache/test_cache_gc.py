"""gc and crash safety: a killed commit is garbage, never an entry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import fsspec
import pytest
from storetools import json_record, key_of, make_dir

from cache.store import ArtifactStore
from tests.storekit import record_uri

REPO = Path(__file__).resolve().parents[2]
K = key_of(7)

# The child commits for real; the subclass only pauses after the first file so
# the SIGKILL lands deterministically between uploads.
CHILD = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from cache.store import ArtifactStore

    class PausingStore(ArtifactStore):
        def _upload(self, src, dst):
            out = super()._upload(src, dst)
            print("uploaded", flush=True)
            time.sleep(60)
            return out

    url, key, src, cache = sys.argv[1:5]
    store = PausingStore.open(url, cache_dir=cache)
    store.commit(key, Path(src), stage="finetune", meta={}, compute_s=1.0)
    print("committed", flush=True)
    """
)


@pytest.fixture(params=["file", "s3"])
def shared_store_url(request, tmp_path):
    """Store URLs another process can reach (memory:// is per process)."""
    if request.param == "file":
        return f"file://{tmp_path}/store"
    return request.getfixturevalue("s3_store_url")


def test_sigkill_mid_commit_leaves_no_entry(shared_store_url, tmp_path):
    src = make_dir(tmp_path / "out", {f"shard-{i}.bin": os.urandom(1 << 20) for i in range(6)})
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, shared_store_url, K, str(src), str(tmp_path / "c")],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert child.stdout.readline().strip() == "uploaded"
        os.kill(child.pid, signal.SIGKILL)
        assert child.wait(timeout=10) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()

    store = ArtifactStore.open(shared_store_url, cache_dir=tmp_path / "c2")
    assert not store.has(K) and store.manifest(K) is None
    assert store.fs.exists(f"{store.root}/objects/{K}/files/shard-0.bin")  # it did upload
    assert store.verify_all() == {K: ["no manifest (uncommitted garbage)"]}
    assert store.ls() == []
    report = store.gc(grace_s=0)
    assert report.removed_garbage == [K] and report.freed_bytes >= 1 << 20
    assert store.verify_all() == {}
    assert not store.fs.exists(f"{store.root}/objects/{K}")


def _commit(store: ArtifactStore, n: int, tmp_path: Path, size: int = 1000) -> str:
    key = key_of(n)
    store.commit(
        key, make_dir(tmp_path / f"o{n}", {"w.bin": b"w" * size}), stage="s", meta={}, compute_s=1
    )
    return key


def test_gc_max_bytes_removes_oldest_first(store, tmp_path):
    k1, k2, k3 = (_commit(store, n, tmp_path) for n in (1, 2, 3))
    with fsspec.open(record_uri(store, k1), "wb") as f:
        f.write(b"{}")
    dry = store.gc(max_bytes=0, dry_run=True)
    assert dry.dry_run and sorted(dry.removed_entries) == sorted([k1, k2, k3])
    assert all(store.has(k) for k in (k1, k2, k3))
    report = store.gc(max_bytes=2500)
    assert report.removed_entries == [k1]
    assert report.freed_bytes >= 1000
    assert not store.has(k1) and store.has(k2) and store.has(k3)
    assert not store.fs.exists(f"{store.root}/prefect/{k1}")  # record goes with its entry
    assert store.gc(max_bytes=2000).removed_entries == []
    assert store.gc(max_bytes=1000).removed_entries == [k2]
    assert [m.key for m in store.ls()] == [k3]


def test_gc_older_than(store, tmp_path):
    old = _commit(store, 1, tmp_path)
    time.sleep(0.3)
    middle = time.time()
    time.sleep(0.3)
    new = _commit(store, 2, tmp_path)
    report = store.gc(older_than_s=time.time() - middle)
    assert report.removed_entries == [old]
    assert not store.has(old) and store.has(new)


def test_gc_and_verify_judge_every_object_under_prefect(store, tmp_path):
    """prefect/ holds only records of entries: orphans, damaged records and
    failure records (uuid names) are reported by verify and removed by gc."""
    kept, damaged = _commit(store, 1, tmp_path), _commit(store, 2, tmp_path)
    orphan = key_of(99)
    for key in (kept, orphan):
        store.write_record(key, json_record(key))
    store.write_record(damaged, b"{}")
    failure = "0123456789abcdef0123456789abcdef"  # Prefect names failure records by uuid
    store.fs.pipe_file(f"{store.root}/prefect/{failure}", b"{}")
    assert store.verify_all() == {
        kept: [],
        damaged: [f"prefect record {damaged}: not a result record"],
        orphan: ["prefect record without a manifest (orphan)"],
        failure: ["not a result record of an entry under prefect/"],
    }
    assert store.gc().removed_records == [damaged]  # the young others may be in flight
    assert store.gc(grace_s=0, dry_run=True).removed_records == sorted([failure, orphan])
    assert store.fs.exists(f"{store.root}/prefect/{orphan}")
    report = store.gc(grace_s=0)
    assert report.removed_records == sorted([failure, orphan]) and report.removed_entries == []
    assert not store.fs.exists(f"{store.root}/prefect/{orphan}")
    assert store.read_record(kept) == json_record(kept)
    assert store.verify_all() == {kept: [], damaged: []}


def test_gc_removes_an_entry_with_a_corrupt_manifest(store, tmp_path):
    good, bad = _commit(store, 1, tmp_path), _commit(store, 2, tmp_path)
    store.fs.pipe_file(f"{store.root}/objects/{bad}/manifest.json", b'{"files": "../x"}')
    assert store.verify_all()[bad][0].startswith("manifest unreadable")
    report = store.gc()
    assert report.removed_entries == [bad]
    assert store.verify_all() == {good: []}


def test_gc_never_removes_a_leased_entry(store, tmp_path):
    from cache import leases

    old, new = _commit(store, 1, tmp_path), _commit(store, 2, tmp_path)
    with leases.hold(store, [old]):
        report = store.gc(max_bytes=0, older_than_s=0)
        assert report.removed_entries == [new] and report.kept_leased == [old]
        assert store.has(old)
    assert store.list_docs("leases") == []  # released
    assert store.gc(max_bytes=0).removed_entries == [old]


def test_a_lapsed_lease_protects_nothing(store, tmp_path):
    k = _commit(store, 1, tmp_path)
    store.put_json("leases/dead-run.json", {"keys": [k], "expires": time.time() - 1})
    store.put_json("leases/broken.json", {"keys": "not a list", "expires": time.time() + 99})
    assert store.leased_keys() == set()
    assert store.gc(max_bytes=0).removed_entries == [k]


def test_gc_on_empty_store(store):
    report = store.gc(max_bytes=0, older_than_s=0, grace_s=0)
    assert (report.removed_garbage, report.removed_entries, report.freed_bytes) == ([], [], 0)


def test_gc_removes_files_no_manifest_lists(store, tmp_path):
    key = _commit(store, 1, tmp_path)
    store.fs.pipe_file(f"{store.root}/objects/{key}/files/stray.parquet", b"x" * 10)
    assert "stray.parquet: not in the manifest" in store.verify_all()[key]
    report = store.gc()
    assert report.removed_strays == [f"{key}/files/stray.parquet"]
    assert store.verify_all() == {key: []}


def test_an_unfinished_record_write_is_a_leftover_not_damage(store, tmp_path):
    """A kill between writing a record's temp file and renaming it (local stores)."""
    from cache.store import UNFINISHED

    key = _commit(store, 1, tmp_path)
    tmp = f".{key}.abc123.tmp"
    store.fs.pipe_file(f"{store.root}/prefect/{tmp}", b"{}")
    assert store.verify_all() == {key: [], tmp: [UNFINISHED]}
    assert store.gc().removed_records == []  # young: maybe still being written
    assert store.gc(grace_s=0).removed_records == [tmp]
    assert store.verify_all() == {key: []}
