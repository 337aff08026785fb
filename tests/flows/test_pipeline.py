"""The pipeline flow on a real Prefect API: caching, suffix reruns, corruption, S3."""

from __future__ import annotations

import asyncio
from typing import Any

from cache.store import ArtifactStore
from flows.config import load_config, set_dotted
from flows.pipeline import pipeline_flow
from flows.plan import plan, stage_keys
from tests.storekit import record_uri


def _run(doc: dict[str, Any], store_url: str, tmp_path) -> dict[str, Any]:
    cfg = load_config(doc=doc)
    return pipeline_flow(cfg.model_dump(mode="json"), store_url, progress=False,
                         lock_dir=str(tmp_path / "locks"))


def _statuses(summary: dict[str, Any]) -> list[str]:
    return [s["status"] for s in summary["stages"]]


def test_rerun_is_cached_and_a_target_change_reruns_only_the_suffix(prefect_api, tiny, store_url, tmp_path):
    first = _run(tiny, store_url, tmp_path)
    assert _statuses(first) == ["computed"] * 4
    assert [s["name"] for s in first["stages"]] == [
        "data_prep", "intermediate_finetune", "target_finetune", "evaluate"]
    assert set(first["metrics"]) == {"accuracy", "f1", "mcc", "loss"}
    store = ArtifactStore(store_url)
    entries = {m.key: m.created for m in store.ls()}
    assert set(entries) == {s["key"] for s in first["stages"]}

    second = _run(tiny, store_url, tmp_path)
    assert _statuses(second) == ["cached"] * 4
    assert all(s["compute_s"] == 0.0 for s in second["stages"])
    assert second["metrics"] == first["metrics"]
    assert {m.key: m.created for m in store.ls()} == entries  # nothing new committed

    tiny["target_finetune"]["optimizer"] = {"mode": "hypergradient", "lr": 1e-3,
                                            "hypergrad_lr": 1e-4}
    third = _run(tiny, store_url, tmp_path)
    assert _statuses(third) == ["cached", "cached", "computed", "computed"]
    assert [s["key"] for s in third["stages"][:2]] == [s["key"] for s in first["stages"][:2]]
    assert third["stages"][2]["key"] != first["stages"][2]["key"]
    adapted = third["adapted"]["target_finetune"]
    assert adapted["mode"] == "hypergradient" and adapted["final_lr"] != 1e-3
    names = {f.name for f in store.manifest(third["stages"][2]["key"]).files}
    assert {"trajectory.json", "trajectory.png", "checkpoint/model.safetensors"} <= names


def test_a_diverging_stage_fails_clearly_and_commits_nothing(prefect_api, tiny, store_url, tmp_path):
    import pytest

    from stages.optim import NonFiniteLossError

    tiny["target_finetune"]["optimizer"] = {"mode": "adamw", "lr": 10.0, "schedule": "constant",
                                            "warmup": 0, "beta2": 0.0, "eps": 1e-30}
    tiny["target_finetune"]["epochs"] = 3
    keys = [k for _, k, _ in stage_keys(load_config(doc=tiny))]
    with pytest.raises(NonFiniteLossError, match="step"):
        _run(tiny, store_url, tmp_path)
    store = ArtifactStore(store_url)
    assert store.has(keys[1]) and not store.has(keys[2]) and not store.has(keys[3])


def test_cached_stages_show_as_cached_in_prefect_and_the_reuse_artifact(prefect_api, tiny, store_url, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    _run(tiny, store_url, tmp_path)
    _run(tiny, store_url, tmp_path)

    async def read() -> tuple[list, list]:
        async with get_client() as client:
            runs = await client.read_task_runs()
            arts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["stage-reuse"])))
            return runs, arts

    runs, arts = asyncio.run(read())
    keys = {s[1] for s in stage_keys(load_config(doc=tiny))}
    cached = [r for r in runs if r.state and r.state.name == "Cached"
              and any(r.name.endswith(f"[{k[:10]}]") for k in keys)]
    assert len(cached) >= 4, [(r.name, r.state.name if r.state else None) for r in runs]
    assert arts, "stage-reuse artifact missing"
    latest = max(arts, key=lambda a: a.created)
    assert "cached" in str(latest.data) and "seconds_saved" in str(latest.data)


def test_corrupted_upstream_file_is_detected_and_recomputed(prefect_api, tiny, store_url, tmp_path):
    first = _run(tiny, store_url, tmp_path)
    store = ArtifactStore(store_url)
    inter = first["stages"][1]["key"]
    name = next(f.name for f in store.manifest(inter).files if f.name.endswith(".safetensors"))
    path = store.fs.unstrip_protocol(f"{store.root}/objects/{inter}/files/{name}")
    with store.fs.open(path, "r+b") as fh:
        fh.seek(100)
        fh.write(b"\x00garbage\x00")
    assert store.verify(inter), "verify must report the corrupted file"

    set_dotted(tiny, "target_finetune.seed", 3)  # target must load the corrupt checkpoint
    second = _run(tiny, store_url, tmp_path)
    assert _statuses(second) == ["cached", "computed", "computed", "computed"]
    assert store.verify(inter) == []


def test_pipeline_on_s3(prefect_api, tiny, s3_store_url, tmp_path, monkeypatch):
    monkeypatch.setenv("MEMOTUNE_FETCH_DIR", str(tmp_path / "fetch"))
    first = _run(tiny, s3_store_url, tmp_path)
    assert _statuses(first) == ["computed"] * 4
    store = ArtifactStore(s3_store_url)
    assert all(store.has(s["key"]) for s in first["stages"])
    assert all(store.fs.exists(record_uri(store, s["key"])) for s in first["stages"])
    second = _run(tiny, s3_store_url, tmp_path)
    assert _statuses(second) == ["cached"] * 4
    assert [p.cached for p in plan(load_config(doc=tiny), store)] == [True] * 4


def test_a_cached_stage_is_charged_its_reads_not_prefects_orchestration(prefect_api, tiny, store_url,
                                                                        tmp_path):
    """A busy Prefect server can hold a task run for seconds before it starts (state calls,
    tag concurrency slots); a cached stage used to be charged that wait as its load, so
    an 88 KB data_prep entry "loaded" in 2 s while computing it took 0.7 s. Here a real
    tag concurrency limit, its one slot held for 3 s, makes the cached data_prep task
    wait: its load stays the hit check (a record and a manifest read)."""
    import threading
    import time

    from prefect import tags
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.concurrency.sync import concurrency

    _run(tiny, store_url, tmp_path)
    tag = "memotune-test-held-slot"
    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=f"tag:{tag}", limit=1))
    held, hold_s = threading.Event(), 3.0

    def hold() -> None:
        with concurrency(f"tag:{tag}", occupy=1):
            held.set()
            time.sleep(hold_s)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert held.wait(30)
        t0 = time.perf_counter()
        with tags(tag):
            second = _run(tiny, store_url, tmp_path)
        waited = time.perf_counter() - t0
    finally:
        holder.join()
        with get_client(sync_client=True) as client:
            client.delete_global_concurrency_limit_by_name(f"tag:{tag}")
    assert _statuses(second) == ["cached"] * 4
    assert waited >= hold_s * 0.8  # the run did wait on Prefect for the slot
    prep = second["stages"][0]
    assert prep["load_s"] < 1.0, prep
    assert sum(s["load_s"] for s in second["stages"]) < 1.0
