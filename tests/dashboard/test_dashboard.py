"""The dashboard without a browser: read-only, tolerant of a store being written, right numbers."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from rich.console import Console

from dashboard.app import create_app, ui_from_api
from dashboard.data import read_snapshot
from dashboard.views import entry_rows, reuse_tree
from flows.run_records import StudyRecord, Trial, round_sig

ROUTES = ["/", "/study/demo", "/study/fresh", "/cache", "/api/fingerprint", "/api/studies",
          "/api/verify", "/favicon.ico", "/static/dashboard.css", "/static/dashboard.js",
          "/study/nope", "/entry/nothex", "/entry/" + "0" * 64]


def tree_state(root: Path) -> dict[str, tuple[int, int, str]]:
    """Every file and folder under root: size, mtime (ns) and content hash."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns, digest)
    return out


def wait_verified(client: TestClient) -> dict:
    deadline = time.monotonic() + 30
    while True:
        state = client.get("/api/verify").json()
        if state["state"] == "done":
            return state
        assert time.monotonic() < deadline, state
        time.sleep(0.05)


def test_pages_never_write_to_the_store(synthetic_store):
    store = synthetic_store["store"]
    root = Path(store.root)
    before = tree_state(root)
    client = TestClient(create_app(store.url, prefect_ui="http://prefect.test"))
    keys = list(synthetic_store["keys"].values())
    for route in ROUTES + [f"/entry/{k}" for k in keys] + [f"/entry/{keys[0]}/trajectory.png"]:
        r = client.get(route)
        assert r.status_code in (200, 404), (route, r.status_code, r.text[:300])
    assert client.post("/api/verify").status_code == 200
    assert wait_verified(client)["damaged"] == {}
    client.get("/cache")
    assert tree_state(root) == before


def test_a_missing_store_is_an_error_and_is_not_created(tmp_path):
    from cache.store import StoreError
    from dashboard.app import serve

    with pytest.raises(StoreError):
        serve(str(tmp_path / "nope"), port=1)
    assert not (tmp_path / "nope").exists()


def test_a_store_being_written_is_read_safely(synthetic_store):
    store = synthetic_store["store"]
    root = Path(store.root)
    # a study.json cut mid-write, a run record of another shape, an uncommitted entry,
    # a study folder without its doc yet, and a stray temp file of an atomic put
    (root / "studies" / "broken").mkdir()
    (root / "studies" / "broken" / "study.json").write_text('{"study": "broken", "trials": [')
    (root / "studies" / "empty").mkdir()
    (root / "runs" / "feedfacefeedfacefeedfacefeedface.json").write_text('{"stages": 3}')
    (root / "runs" / ".x.json.123.tmp").write_text("{")
    half = root / "objects" / ("ab" * 32) / "files"
    half.mkdir(parents=True)
    (half / "weights.bin").write_bytes(b"123")
    client = TestClient(create_app(store.url))
    home = client.get("/")
    assert home.status_code == 200
    assert "Skipped 2 documents" in home.text and "studies/broken/study.json" in home.text
    assert 'data-study="demo"' in home.text and 'data-study="broken"' not in home.text
    assert client.get("/study/broken").status_code == 404
    assert client.get("/study/empty").status_code == 404
    cache = client.get("/cache")
    assert cache.status_code == 200 and "ab" * 8 not in cache.text
    assert wait_verified(client)["leftovers"] == ["ab" * 32]


def test_study_numbers_match_the_trials(synthetic_store):
    store = synthetic_store["store"]
    trials = synthetic_store["trials"]
    client = TestClient(create_app(store.url, prefect_ui="http://prefect.test"))
    rows = {r["study"]: r for r in client.get("/api/studies").json()}
    saved = sum(s["saved_s"] for t in trials for s in t["stages"])
    assert rows["demo"]["saved_s"] == pytest.approx(saved)
    assert rows["demo"]["trials"] == 3 and rows["fresh"]["trials"] == 0
    assert rows["demo"]["hit_rate"] == pytest.approx(6 / 12)
    assert rows["fresh"]["state"] == "running"
    page = client.get("/study/demo").text
    assert len(re.findall(r'<tr class="trial"', page)) == 3
    # the union of params: trial 1's conditional hypergrad_lr is a column, numbers rounded
    assert "target.optimizer.hypergrad_lr" in page and ">3.333e-06<" in page
    assert ">0.001235<" in page and "0.001234567<" not in page
    distinct = {(d, s["key"]) for t in trials for d, s in enumerate(t["stages"])}
    assert page.count("<g class='node ") == len(distinct) == 6
    for rid in synthetic_store["run_ids"]:
        assert f'href="http://prefect.test/runs/flow-run/{rid}"' in page
    shown = re.search(r'id="saved" data-v="([^"]+)"', page).group(1)
    assert float(shown) == pytest.approx(saved)


def test_cache_entries_count_hits_saved_seconds_and_users(synthetic_store):
    store = synthetic_store["store"]
    keys = synthetic_store["keys"]
    snap = read_snapshot(store)
    rows = {r.key: r for r in entry_rows(snap)}
    assert len(rows) == 9
    d = rows[keys["d"]]
    # reused by trials 1 and 2, and by the run outside the study; computed by trial 0
    assert (d.hits, d.computed) == (3, 1)
    assert d.saved_s == pytest.approx(3 * (2.0 - 0.2))
    assert d.studies == {"demo"} and len(d.runs) == 4
    assert rows[keys["t2"]].hits == 0 and rows[keys["t1"]].hits == 1
    page = TestClient(create_app(store.url)).get("/cache").text
    size = sum(m.total_bytes for m in store.ls())
    assert f'data-bytes="{size}"' in page


def test_reuse_tree_has_one_node_per_distinct_key():
    def trial(i: int, keys: list[str], cached: int) -> Trial:
        return Trial.model_validate({"id": i, "stages": [
            {"name": f"s{d}", "key": k, "status": "cached" if d < cached else "computed",
             "compute_s": 1.0, "saved_s": 2.0 if d < cached else 0.0}
            for d, k in enumerate(keys)]})

    trials = [trial(0, ["a", "b", "c"], 0), trial(1, ["a", "b", "d"], 2),
              trial(2, ["a", "e", "f"], 1), trial(3, ["a", "b", "c"], 3)]
    roots, columns = reuse_tree(trials)
    assert [len(c) for c in columns] == [1, 2, 3]
    (root,) = roots
    assert root.trials == [0, 1, 2, 3] and root.reused_by == [1, 2, 3]
    assert root.saved_s == 6.0 and root.computed_by == [0]
    leaves = sorted((n.key, n.trials) for n in columns[2])
    assert leaves == [("c", [0, 3]), ("d", [1]), ("f", [2])]
    assert all(c.parent is n for n in columns[1] for c in n.children)


def test_records_tolerate_old_and_partial_documents():
    rec = StudyRecord.model_validate({"study": "old", "trials": [
        {"id": 0, "params": [{"lr": 0.1}], "objective": None,
         "stages": [{"name": "data_prep", "key": "k", "status": "cached", "compute_s": None}]}],
        "config": {"search": {"target_finetune": {}}}})
    assert rec.tuned_stages == ["target_finetune"] and rec.best is None
    assert rec.trials[0].flat_params(rec.tuned_stages) == {"target_finetune.lr": 0.1}
    assert rec.saved_s == 0.0 and rec.hit_rate == 1.0
    assert round_sig(0.000123456) == 0.0001235 and round_sig(3) == 3 and round_sig("x") == "x"


def test_prefect_ui_links():
    assert ui_from_api("http://127.0.0.1:4200/api") == "http://127.0.0.1:4200"
    assert (ui_from_api("https://api.prefect.cloud/api/accounts/a1/workspaces/w2")
            == "https://app.prefect.cloud/account/a1/workspace/w2")


def test_cli_tables_have_saved_seconds_and_totals(synthetic_store, monkeypatch):
    from typer.testing import CliRunner

    import flows.cli as cli
    from flows.run_records import StageRun, StudyResult

    store = synthetic_store["store"]
    ls = CliRunner().invoke(cli.app, ["cache", "ls", "--store", store.url])
    assert ls.exit_code == 0, ls.output
    total = sum(m.total_bytes for m in store.ls())
    assert re.search(r"total .*9 entries .*" + re.escape(cli._human(total)), ls.output)
    console = Console(record=True, width=220)
    monkeypatch.setattr(cli, "out", console)
    trials = synthetic_store["trials"]
    cli._stage_table([StageRun.model_validate(s) for s in trials[1]["stages"]], "run")
    cli._trials_table(StudyResult(study="demo", tuner="eeipu", budget=trials[-1]["spent"],
                                  spent=trials[-1]["spent"], trials=trials,
                                  stage_names=["intermediate_finetune", "target_finetune"]))
    text = console.export_text()
    assert text.count("saved s") == 2
    saved_run = sum(s["saved_s"] for s in trials[1]["stages"])
    saved_study = sum(s["saved_s"] for t in trials for s in t["stages"])
    assert re.search(rf"total .*2/4 cached .*{saved_run:.2f}", text), text
    assert re.search(rf"total .*6/12 .*{saved_study:.1f}", text), text


def test_progress_bar_shares_the_log_console_and_shows_no_nan():
    from stages.base import StageContext
    from stages.training import _progress, log_console

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)

    class Handler(logging.Handler):  # prints through a rich Console, like Prefect's handler
        def __init__(self) -> None:
            super().__init__()
            self.console = console

        def emit(self, record: logging.LogRecord) -> None:
            self.console.print(self.format(record), soft_wrap=True)

    logger = logging.getLogger("memotune.test.progress")
    logger.addHandler(Handler())
    logger.setLevel(logging.INFO)
    try:
        adapter = logging.LoggerAdapter(logger, {})
        assert log_console(adapter) is console
        ctx = StageContext(logger=adapter, progress=True)
        with _progress(ctx, "target", 3) as advance:
            logger.info("before the first step")
            for loss in (0.7, 0.6, 0.5):
                advance(loss)
                logger.info("step done")
    finally:
        logger.handlers.clear()
    out = buf.getvalue()
    assert "nan" not in out
    # every log line starts on a line of its own: the bar is cleared (carriage return, erase
    # line) before it is printed, and drawn again below it
    for m in re.finditer(r"(before the first step|step done)", out):
        line = out[out.rfind("\n", 0, m.start()) + 1:m.start()]
        shown = line.rsplit("\r", 1)[-1].replace("\x1b[2K", "")  # what the terminal keeps
        assert shown.strip() == "", repr(line)
    assert out.count("step done") == 3 and "loss 0.5000" in out


def test_a_multi_fidelity_study_shows_each_trials_configuration_and_rung(synthetic_store):
    store = synthetic_store["store"]
    doc = store.get_json("studies/demo/study.json")
    for t, (config, rung) in zip(doc["trials"], [(0, 0), (1, 0), (0, 1)], strict=True):
        t.update(config_id=config, rung=rung, epochs=[2, 6][rung])
    store.put_json("studies/mf/study.json", {**doc, "study": "mf", "tuner": "asha"})
    client = TestClient(create_app(store.url))
    mf, plain = client.get("/study/mf").text, client.get("/study/demo").text
    assert "config/rung</th>" in mf and ">0/1</td>" in mf and ">1/0</td>" in mf
    assert "config/rung" not in plain
