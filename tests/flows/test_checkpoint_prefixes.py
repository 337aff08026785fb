"""Checkpoint prefixes in the pipeline: boundaries are entries of their own, and a
longer run continues from the deepest one, ending exactly where a fresh run ends."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from cache.store import ArtifactStore
from flows.config import load_config
from flows.pipeline import pipeline_flow
from flows.plan import boundary_keys, plan, stage_keys

pytestmark = pytest.mark.slow

CONSTANT = {"mode": "adamw", "lr": 1e-3, "schedule": "constant", "warmup": 0}


def _doc(tiny: dict[str, Any], epochs: int, optimizer: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(tiny)
    doc["target_finetune"] = {"epochs": epochs, "optimizer": optimizer}
    return doc


def _run(doc: dict[str, Any], store_url: str, tmp_path) -> dict[str, Any]:
    return pipeline_flow(load_config(doc=doc).model_dump(mode="json"), store_url,
                         progress=False, lock_dir=str(tmp_path / "locks"))


def _weights(store: ArtifactStore, key: str) -> str:
    files = {f.name: f.sha256 for f in store.manifest(key).files}
    return files["checkpoint/model.safetensors"]


def test_a_longer_run_continues_from_the_cached_boundary(prefect_api, tiny, tmp_path):
    store_url = str(tmp_path / "store")
    store = ArtifactStore(store_url)
    two = _doc(tiny, 2, CONSTANT)
    first = _run(two, store_url, tmp_path)
    bounds = boundary_keys(stage_keys(load_config(doc=two)))["target_finetune"]
    assert sorted(bounds) == [1, 2] and all(store.has(k) for k in bounds.values())
    assert store.manifest(bounds[2]).meta["boundary"] == {
        "stage": "target_finetune", "epoch": 2, "of": first["stages"][2]["key"]}

    three = _doc(tiny, 3, CONSTANT)
    planned = {p.name: p for p in plan(load_config(doc=three), store)}
    target_plan = planned["target_finetune"]
    assert not target_plan.cached and (target_plan.resume_epoch, target_plan.epochs) == (2, 3)
    assert target_plan.remaining_s == pytest.approx(store.manifest(bounds[2]).compute_s / 2)
    assert planned["evaluate"].resume_epoch is None
    second = _run(three, store_url, tmp_path)
    assert [s["status"] for s in second["stages"]] == ["cached", "cached", "computed", "computed"]
    target = store.manifest(second["stages"][2]["key"])
    assert target.meta["meta"]["resumed_from_epoch"] == 2
    assert target.meta["meta"]["steps"] == 3 * first_steps_per_epoch(store, first)

    fresh_url = str(tmp_path / "fresh")
    fresh = _run(three, fresh_url, tmp_path)
    assert fresh["stages"][2]["key"] == second["stages"][2]["key"]
    assert "resumed_from_epoch" not in ArtifactStore(fresh_url).manifest(
        fresh["stages"][2]["key"]).meta["meta"]
    # bit for bit: the continued run's weights are the uninterrupted run's
    assert _weights(store, second["stages"][2]["key"]) == _weights(
        ArtifactStore(fresh_url), fresh["stages"][2]["key"])
    assert second["metrics"] == fresh["metrics"]


def first_steps_per_epoch(store: ArtifactStore, summary: dict[str, Any]) -> int:
    return store.manifest(summary["stages"][2]["key"]).meta["meta"]["steps"] // 2


def test_a_cosine_stage_has_no_boundaries_and_never_continues(prefect_api, tiny, tmp_path):
    store_url = str(tmp_path / "store")
    cosine = {**CONSTANT, "schedule": "cosine"}
    _run(_doc(tiny, 2, CONSTANT), store_url, tmp_path)  # boundaries of a constant run exist
    assert boundary_keys(stage_keys(load_config(doc=_doc(tiny, 3, cosine)))).get(
        "target_finetune") == {}
    done = _run(_doc(tiny, 3, cosine), store_url, tmp_path)
    meta = ArtifactStore(store_url).manifest(done["stages"][2]["key"]).meta["meta"]
    assert "resumed_from_epoch" not in meta
