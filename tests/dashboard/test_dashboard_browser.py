"""The reuse dashboard in a real browser (Playwright driving Debian's chromium) on a store
holding a real study, and the Prefect API's view of that study.

The study: the TINY pipeline, a 2-param search (intermediate task on/off, target lr), the
random tuner, 3 trials, through a real Prefect API. Screenshots go to the test's tmp
folder; with MEMOTUNE_SCREENSHOT=1 the study page's also replaces docs/dashboard.png
(the README's picture).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest

from cache.store import ArtifactStore
from tests.dashboard.served import Served
from tests.flows.conftest import TINY

CHROMIUM = os.environ.get("MEMOTUNE_CHROMIUM", "/usr/bin/chromium")
DOCS_PNG = Path(__file__).resolve().parents[2] / "docs" / "dashboard.png"
SEARCH = {
    "intermediate_finetune": {"enabled": {"type": "categorical", "choices": [True, False]}},
    "target_finetune": {"optimizer.lr": {"type": "float", "low": 3e-4, "high": 3e-2, "log": True}},
}
UI_TASK_INPUTS = {"task_run", "parameter", "constant"}  # what the Prefect V1 UI can parse

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def study(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    from flows.config import load_config
    from flows.tune import tune_flow

    root = tmp_path_factory.mktemp("study")
    doc = copy.deepcopy(TINY)
    doc["search"] = SEARCH
    doc["objective"] = "loss"  # varies from trial to trial (accuracy stays at chance here)
    cfg = load_config(doc=doc)
    store_url = str(root / "store")
    state = tune_flow(store_url, "browser", config=cfg.model_dump(mode="json"), tuner="random",
                      budget=1e6, warmup=2, seed=0, progress=False,
                      lock_dir=str(root / "locks"), max_trials=3, return_state=True)
    result = state.result()
    return {"store": ArtifactStore(store_url), "result": result, "api": prefect_api,
            "ui": prefect_api.removesuffix("/api"),
            "tune_run_id": state.state_details.flow_run_id}


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def test_the_dashboard_shows_the_study_as_a_person_checks_it(study, browser, tmp_path):
    store: ArtifactStore = study["store"]
    trials = study["result"]["trials"]
    saved = sum(s["saved_s"] for t in trials for s in t["stages"])
    errors: list[str] = []
    with Served(store.url, prefect_ui=study["ui"]) as served:
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

        # Studies: the study, its 3 trials and the seconds its reuse saved
        page.goto(served.url + "/")
        row = page.locator('tr[data-study="browser"]')
        assert row.locator("td.trials").inner_text() == "3"
        assert float(row.locator("td.saved").get_attribute("data-v")) == pytest.approx(saved)
        assert row.locator("td.saved").inner_text() == f"{saved:.1f}"
        page.screenshot(path=tmp_path / "studies.png", full_page=True)

        # One study: N trial rows, saved seconds, one tree node per distinct stage key
        page.click("text=browser")
        page.wait_for_url("**/study/browser")
        assert page.locator("#trials tbody tr.trial").count() == 3
        assert page.locator("#n-trials").inner_text() == "3"
        assert float(page.locator("#saved").get_attribute("data-v")) == pytest.approx(saved)
        assert page.locator("#saved-total").inner_text() == f"{saved:.2f}"
        distinct = {(d, s["key"]) for t in trials for d, s in enumerate(t["stages"])}
        nodes = page.locator(".tree g.node")
        assert nodes.count() == len(distinct)
        shown = {(int(n.get_attribute("data-depth") or -1), n.get_attribute("data-key"))
                 for n in nodes.all()}
        assert {k for _, k in shown} == {k for _, k in distinct}
        assert page.locator(".plot.progress .pt").count() == 3
        page.screenshot(path=tmp_path / "study.png", full_page=True)
        for t in trials:  # each trial links to its Prefect flow run
            link = page.locator(f'tr.trial[data-trial="{t["id"]}"] a.run-link')
            assert link.get_attribute("href") == f"{study['ui']}/runs/flow-run/{t['flow_run_id']}"
            assert link.inner_text().startswith(f"browser-{t['id']}")
        page.click("#trials th:first-child")  # sortable: ascending, then descending
        page.click("#trials th:first-child")
        ids = page.locator("#trials tbody tr.trial").evaluate_all(
            "rows => rows.map(r => Number(r.dataset.trial))")
        assert ids == sorted((t["id"] for t in trials), reverse=True)
        page.reload()  # the order is kept in the URL
        assert page.locator("#trials tbody tr.trial").first.get_attribute("data-trial") == str(
            max(t["id"] for t in trials))
        page.locator('tr.trial[data-trial="0"]').hover()  # its path lights up in the tree
        assert page.locator(".tree g.node.hl").count() == len(trials[0]["stages"])

        # Cache: the total is the store's size; every entry verified sound
        page.click("text=Cache")
        page.wait_for_url("**/cache")
        entries = store.ls()
        assert page.locator("#n-entries").inner_text() == str(len(entries))
        total = sum(m.total_bytes for m in entries)
        assert int(page.locator("#total-size").get_attribute("data-bytes")) == total
        assert page.locator("#entries tbody tr").count() == len(entries)
        page.wait_for_function(
            "document.getElementById('verify-status').dataset.state === 'done'", timeout=30000)
        assert page.locator("#verify-status").inner_text() == f"{len(entries)} checked, 0 damaged"
        assert page.locator("td.verify .ok").count() == len(entries)
        page.screenshot(path=tmp_path / "cache.png", full_page=True)

        # An entry: a training stage's trajectory plot is shown
        target = next(s["key"] for s in trials[0]["stages"] if s["name"] == "target_finetune")
        page.goto(f"{served.url}/entry/{target}")
        img = page.locator("figure.traj img")
        img.wait_for()
        assert img.evaluate("i => i.complete && i.naturalWidth > 0")
        page.screenshot(path=tmp_path / "entry.png", full_page=True)

        # Live: a study written meanwhile appears without a manual reload (the page polls)
        page.goto(served.url + "/")
        doc = store.get_json("studies/browser/study.json")
        store.put_json("studies/browser-late/study.json", {**doc, "study": "browser-late"})
        page.locator('tr[data-study="browser-late"]').wait_for(timeout=20000)
        assert page.locator("#total-studies").inner_text() == "2"
        store.delete_doc("studies/browser-late/study.json")
        page.close()
    assert errors == []
    for name in ("studies", "study", "cache", "entry"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    if os.environ.get("MEMOTUNE_SCREENSHOT") == "1":
        DOCS_PNG.parent.mkdir(exist_ok=True)
        shutil.copyfile(tmp_path / "study.png", DOCS_PNG)


def test_prefect_sees_every_task_run_and_no_input_between_trials(study):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    tune_id = study["tune_run_id"]
    with get_client(sync_client=True) as client:
        every = client.read_task_runs(limit=200)
        wrappers = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[tune_id])))
        trial_runs = {fr.name: fr for fr in client.read_flow_runs(limit=200)
                      if fr.parent_task_run_id in {w.id for w in wrappers}}
    assert len(wrappers) == 3  # one task run per trial's subflow in the tune flow
    for w in wrappers:
        kinds = {i.input_type for inputs in w.task_inputs.values() for i in inputs}
        assert "flow_run" not in kinds, (w.name, w.task_inputs)
    for t in study["result"]["trials"]:
        fr = trial_runs[f"browser-{t['id']}"]
        assert str(fr.id) == t["flow_run_id"]
        assert {"study:browser", "tuner:random", f"trial:{t['id']}"} <= set(fr.tags)
    # the query the Prefect UI's Task runs list makes, and what it can parse
    r = httpx.post(f"{study['api']}/task_runs/paginate",
                   json={"page": 1, "limit": 200, "sort": "EXPECTED_START_TIME_DESC"})
    r.raise_for_status()
    page = r.json()
    assert page["count"] == len(page["results"]) == len(every)
    for tr in page["results"]:
        kinds = {i["input_type"] for inputs in tr["task_inputs"].values() for i in inputs}
        assert kinds <= UI_TASK_INPUTS, (tr["name"], tr["task_inputs"])


def test_the_study_publishes_per_study_artifacts(study):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    def latest(client: Any, key: str) -> Any:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=[key])))
        assert arts, key
        return max(arts, key=lambda a: a.updated)

    trials = study["result"]["trials"]
    with get_client(sync_client=True) as client:
        progress = latest(client, "tune-progress-browser")
        table = latest(client, "tune-trials-browser")
        summary = latest(client, "tune-summary-browser")
        n_tables = len(client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["tune-trials-browser"]))))
    assert progress.data == 100 and "max_trials=3" in progress.description
    assert n_tables >= 3  # published after every trial
    import json

    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["trial"] for r in rows] == [t["id"] for t in trials]
    assert len({tuple(r) for r in rows}) == 1  # every row has every column
    assert {"intermediate_finetune.enabled", "target_finetune.optimizer.lr"} <= set(rows[0])
    assert all(len(f"{r['target_finetune.optimizer.lr']:.10g}".strip("0.").replace(".", ""))
               <= 4 for r in rows)
    saved = sum(s["saved_s"] for t in trials for s in t["stages"])
    assert f"| seconds saved by reuse | {saved:.1f} |" in summary.data
    assert "| trials | 3 |" in summary.data


def test_a_cached_task_run_shows_its_cache_key(study):
    from prefect.client.orchestration import get_client

    keys = {s["key"] for t in study["result"]["trials"] for s in t["stages"]}
    with get_client(sync_client=True) as client:
        # this study's (the session's Prefect API has other tests' runs too)
        stage_runs = [tr for tr in client.read_task_runs(limit=200)
                      if tr.name.split("[", 1)[0] in {"data_prep", "intermediate_finetune",
                                                      "target_finetune", "evaluate"}
                      and "study:browser" in tr.tags]
    cached = [tr for tr in stage_runs if tr.state_name == "Cached"]
    assert cached and stage_runs
    assert all(tr.cache_key in keys for tr in stage_runs), [tr.cache_key for tr in stage_runs]


def test_the_stage_reuse_table_has_a_total_row(study):
    import json

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        arts = client.read_artifacts(artifact_filter=ArtifactFilter(
            key=ArtifactFilterKey(any_=["stage-reuse"])))
    last = max(arts, key=lambda a: a.created)
    rows = json.loads(last.data) if isinstance(last.data, str) else last.data
    *stages, total = rows
    assert total["stage"] == "total" and len(stages) == 4
    assert total["seconds_saved"] == pytest.approx(sum(r["seconds_saved"] for r in stages))
