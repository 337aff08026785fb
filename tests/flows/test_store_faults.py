"""A shared store that someone else damaged, or wrote to: the pipeline flow
repairs what it can and never lets a stored record choose its deserializer.

In-process pipeline runs on the session's Prefect API with the tiny config;
tests/reliability/ drives the same faults through the CLI.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from prefect._internal.result_records import ResultRecord, ResultRecordMetadata
from prefect.serializers import PickleSerializer

from cache.store import ArtifactStore
from flows.config import load_config
from flows.pipeline import pipeline_flow


class Payload:
    """Creates a marker file when unpickled: proof that a record was unpickled."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def _run(doc: dict[str, Any], store_url: str, tmp_path: Path) -> dict[str, Any]:
    cfg = load_config(doc=doc)
    return pipeline_flow(cfg.model_dump(mode="json"), store_url, progress=False,
                         lock_dir=str(tmp_path / "locks"))


def _status(summary: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


@pytest.fixture(scope="module")
def pristine(prefect_api, tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    """One computed run of the tiny config; each test damages its own copy."""
    from tests.flows.conftest import TINY

    root = tmp_path_factory.mktemp("pristine")
    summary = _run(TINY, str(root / "store"), root)
    assert set(_status(summary).values()) == {"computed"}
    return root / "store", summary


@pytest.fixture
def first(pristine, store_url) -> dict[str, Any]:
    shutil.copytree(pristine[0], store_url)
    return pristine[1]


def _key(summary: dict[str, Any], stage: str) -> str:
    return next(s["key"] for s in summary["stages"] if s["name"] == stage)


def test_a_pickle_record_is_never_unpickled(first, tiny, store_url, tmp_path):
    store = ArtifactStore(store_url)
    key = _key(first, "target_finetune")
    marker = tmp_path / "unpickled"
    record = ResultRecord(metadata=ResultRecordMetadata(storage_key=key,
                                                        serializer=PickleSerializer()),
                          result=Payload(str(marker)))
    store.fs.pipe_file(f"{store.root}/prefect/{key}", record.serialize())

    again = _run(tiny, store_url, tmp_path)
    assert not marker.exists(), "a record from the store was unpickled"
    assert set(_status(again).values()) == {"cached"}  # served from the manifest
    assert again["metrics"] == first["metrics"]
    assert store.verify_all()[key] == []  # the record was rewritten as JSON
    assert b'"type":"json"' in store.fs.cat_file(f"{store.root}/prefect/{key}")


def test_a_deleted_manifest_with_its_record_left_is_recomputed(first, tiny, store_url, tmp_path):
    store = ArtifactStore(store_url)
    key = _key(first, "target_finetune")
    store.fs.rm(f"{store.root}/objects/{key}/manifest.json")
    assert store.fs.exists(f"{store.root}/prefect/{key}")
    again = _run(tiny, store_url, tmp_path)
    assert _status(again) == {"data_prep": "cached", "intermediate_finetune": "cached",
                              "target_finetune": "computed", "evaluate": "cached"}
    assert again["metrics"] == first["metrics"]
    assert all(v == [] for v in store.verify_all().values())


def test_a_corrupt_manifest_is_recomputed(first, tiny, store_url, tmp_path):
    store = ArtifactStore(store_url)
    key = _key(first, "intermediate_finetune")
    store.fs.pipe_file(f"{store.root}/objects/{key}/manifest.json",
                       b'{"key": "x", "files": [{"name": "../../escape"}]}')
    again = _run(tiny, store_url, tmp_path)
    assert _status(again)["intermediate_finetune"] == "computed"
    assert again["metrics"] == first["metrics"]
    assert all(v == [] for v in store.verify_all().values())


def test_an_entry_without_its_record_is_reported_cached_not_computed(first, tiny, store_url,
                                                                     tmp_path):
    """A kill between the manifest and Prefect's record: the rerun computes nothing
    and must not charge the tuner for the old compute seconds."""
    store = ArtifactStore(store_url)
    key = _key(first, "intermediate_finetune")
    store.fs.rm(f"{store.root}/prefect/{key}")
    again = _run(tiny, store_url, tmp_path)
    row = next(s for s in again["stages"] if s["key"] == key)
    assert row["status"] == "cached" and row["compute_s"] == 0.0
    assert store.fs.exists(f"{store.root}/prefect/{key}")  # repaired
