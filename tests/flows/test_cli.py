"""The `memotune` command as a user runs it: errors, --json, kill -9, verify."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from cache.store import ArtifactStore
from flows.cli import app
from flows.config import load_config
from flows.plan import stage_keys

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
TINY_SEARCH = {"target_finetune": {"epochs": {"type": "int", "low": 1, "high": 2}}}
runner = CliRunner()


def _write(tmp_path: Path, doc: dict, name: str = "cfg.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc))
    return str(path)


@pytest.mark.parametrize("args, needle", [
    (["--set", "target_finetune.epoch=3"], "target_finetune.epoch"),
    (["--set", "target_finetune.epochs=three"], "target_finetune.epochs"),
    (["--set", "target_finetune.optimizer.lr=fast"], "target_finetune.optimizer"),
    (["--set", "data_prep.target.source=csv", "--set",
      "data_prep.target.data_files={train: /nonexistent/train.csv, validation: /nonexistent/v.csv}"],
     "/nonexistent/train.csv"),
    (["missing.yaml"], "missing.yaml"),
])
def test_bad_input_is_one_clear_line_exit_2_and_nothing_written(tmp_path, args, needle):
    store = tmp_path / "store"
    for command in ("run", "plan"):
        result = runner.invoke(app, [command, *args, "--store", str(store)])
        assert result.exit_code == 2, result.output
        assert needle in result.output
        assert "Traceback" not in result.output
        assert not store.exists()


def test_unknown_yaml_key_names_file_and_field(tmp_path):
    cfg = _write(tmp_path, {"target_finetune": {"optimiser": {"lr": 0.1}}})
    result = runner.invoke(app, ["plan", cfg, "--store", str(tmp_path / "s")])
    assert result.exit_code == 2
    assert "cfg.yaml" in result.output and "target_finetune.optimiser" in result.output


def test_unreachable_store_url_is_named_without_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRET")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "supersecret")
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    result = runner.invoke(app, ["run", "--store", "s3://no-such-bucket/x"])
    assert result.exit_code == 2
    assert "s3://no-such-bucket/x" in result.output
    assert "supersecret" not in result.output
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = runner.invoke(app, ["run", "--store", str(blocker / "store")])
    assert result.exit_code == 2 and str(blocker) in result.output


def test_plan_json_shows_keys_and_nothing_cached(tmp_path):
    result = runner.invoke(app, ["plan", "--json", "--store", str(tmp_path / "s")])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert [s["name"] for s in doc["stages"]] == [
        "data_prep", "intermediate_finetune", "target_finetune", "evaluate"]
    assert [s["key"] for s in doc["stages"]] == [k for _, k, _ in stage_keys(load_config())]
    assert not any(s["cached"] for s in doc["stages"])


def _run_json(cfg: str, store_url: str, env: dict) -> dict:
    done = subprocess.run([MEMOTUNE, "run", cfg, "--json", "--store", store_url], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)  # exactly one JSON object on stdout


@pytest.mark.slow
def test_kill_during_intermediate_leaves_no_entry_and_the_rerun_finishes(tiny, cli_env, tmp_path):
    tiny["intermediate_finetune"]["epochs"] = 100  # long enough to be killed mid-stage
    cfg = _write(tmp_path, tiny)
    store_url = str(tmp_path / "store")
    keys = [k for _, k, _ in stage_keys(load_config(cfg))]
    store = ArtifactStore(store_url)
    lock = Path(cli_env["HOME"]) / ".memotune" / "locks" / f"{keys[1]}.lock"
    proc = subprocess.Popen([MEMOTUNE, "run", cfg, "--json", "--store", store_url], env=cli_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while not lock.exists():  # the intermediate stage's task has started
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "intermediate_finetune never started"
            time.sleep(0.05)
        time.sleep(0.5)
        assert proc.poll() is None
        os.killpg(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert store.has(keys[0]) and not store.has(keys[1])
    assert lock.exists()  # the dead run's lock is left behind, and must not block
    verify = subprocess.run([MEMOTUNE, "cache", "verify", "--store", store_url], env=cli_env,
                            capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr

    summary = _run_json(cfg, store_url, cli_env)  # the same config, the same keys
    assert [s["status"] for s in summary["stages"]] == ["cached"] + ["computed"] * 3
    assert [s["key"] for s in summary["stages"]] == keys
    assert set(summary) == {"objective", "metrics", "stages"}
    assert all(set(s) == {"name", "key", "status", "compute_s", "load_s", "saved_s"}
               for s in summary["stages"])
    again = _run_json(cfg, store_url, cli_env)
    assert [s["status"] for s in again["stages"]] == ["cached"] * 4
    gc = subprocess.run([MEMOTUNE, "cache", "gc", "--grace", "0s", "--store", store_url],
                        env=cli_env, capture_output=True, text=True)
    # killed while training, before any upload: nothing half-written to collect
    assert gc.returncode == 0 and "removed 0 uncommitted, 0 entries" in gc.stdout, gc.stdout
    assert len(store.ls()) == 4


@pytest.mark.slow
def test_concurrent_runs_of_one_config_compute_each_stage_once(tiny, cli_env, tmp_path):
    cfg = _write(tmp_path, tiny)
    store_url = str(tmp_path / "store")
    args = [MEMOTUNE, "run", cfg, "--json", "--store", store_url]
    procs = [subprocess.Popen(args, env=cli_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    runs = [json.loads(o[0]) for o in outs]
    for i in range(4):
        statuses = sorted(r["stages"][i]["status"] for r in runs)
        assert statuses.count("computed") == 1, (i, statuses)
    assert runs[0]["metrics"] == runs[1]["metrics"]


@pytest.mark.slow
def test_cli_starts_one_local_prefect_server_and_reuses_it(tiny, cli_env, tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in cli_env.items() if not k.startswith("PREFECT_API")}
    env["MEMOTUNE_PREFECT_PORT"] = str(port)
    tiny["search"] = TINY_SEARCH
    cfg = _write(tmp_path, tiny)
    store_url = str(tmp_path / "store")
    pid_file = Path(env["HOME"]) / ".memotune" / "prefect-server.pid"
    try:
        first = subprocess.run([MEMOTUNE, "run", cfg, "--json", "--store", store_url], env=env,
                               capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        assert f"Prefect UI: http://127.0.0.1:{port}" in first.stderr
        # --json: the object alone on stdout, progress (a line per epoch) on stderr
        assert json.loads(first.stdout)["objective"] is not None
        assert "target epoch 1: held-out loss" in first.stderr
        pid = pid_file.read_text()
        second = _run_json(cfg, store_url, env)
        assert [s["status"] for s in second["stages"]] == ["cached"] * 4
        assert pid_file.read_text() == pid  # the same server, not a new one
        tune = subprocess.run([MEMOTUNE, "tune", cfg, "--store", store_url, "--max-trials", "1",
                               "--warmup", "1", "--study", "on-server",
                               "--plot", str(tmp_path / "p.png")],
                              env=env, capture_output=True, text=True, timeout=600)
        assert tune.returncode == 0, tune.stderr[-3000:]
        assert pid_file.read_text() == pid
        # tune too runs on the local server, not on a temporary one of its own
        assert "temporary server" not in tune.stdout + tune.stderr
        flows = httpx.post(f"http://127.0.0.1:{port}/api/flows/filter", json={}).json()
        assert {"memotune-pipeline", "memotune-tune"} <= {f["name"] for f in flows}
    finally:
        stop = subprocess.run([MEMOTUNE, "server", "stop"], env=env, capture_output=True, text=True)
    assert "stopped" in stop.stdout


@pytest.mark.parametrize("args, needle", [
    (["--parallel", "2"], "--parallel needs --deployment"),
    (["--parallel", "0"], "--parallel must be >= 1"),
    (["--deployment", "offline-default"], "--deployment"),
])
def test_tune_dispatch_options_are_checked_before_anything_runs(tmp_path, args, needle):
    store = tmp_path / "store"
    result = runner.invoke(app, ["tune", *args, "--store", str(store)])
    assert result.exit_code == 2, result.output
    assert needle in result.output and "Traceback" not in result.output
    assert not store.exists()


def test_tune_names_a_missing_deployment(tiny, cli_env, tmp_path):
    tiny["search"] = TINY_SEARCH
    cfg = _write(tmp_path, tiny)
    store = tmp_path / "store"
    done = subprocess.run([MEMOTUNE, "tune", cfg, "--store", str(store), "--max-trials", "1",
                           "--deployment", "memotune-pipeline/nope", "--json"],
                          env=cli_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-3000:]
    assert "memotune-pipeline/nope" in done.stderr and "Traceback" not in done.stderr
    assert not (store / "studies").exists()


def test_a_bad_lock_setting_is_one_line_exit_2(tmp_path):
    for args in (["--locks", "memcached://x"], []):
        env = {"MEMOTUNE_LOCKS": "http://nope"} if not args else {}
        result = runner.invoke(app, ["run", *args, "--store", str(tmp_path / "s")], env=env)
        assert result.exit_code == 2, result.output
        assert "MEMOTUNE_LOCKS" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "s").exists()


def test_a_stage_that_fails_mid_run_is_one_line_exit_1_and_leaves_no_residue(cli_env, tiny,
                                                                              tmp_path):
    """target_finetune diverges (a NaN loss) after data_prep and intermediate_finetune
    were committed: no traceback on the console, one last line naming the stage and
    the cause, exit 1, and nothing of the failed stage in the store (no entry, no
    Prefect failure record, no lease); what was committed before is sound."""
    tiny["target_finetune"]["optimizer"] = {"mode": "adamw", "lr": 10.0, "schedule": "constant",
                                            "warmup": 0, "beta2": 0.0, "eps": 1e-30}
    tiny["target_finetune"]["epochs"] = 3
    keys = [k for _, k, _ in stage_keys(load_config(doc=tiny))]
    store = tmp_path / "store"
    done = subprocess.run([MEMOTUNE, "run", _write(tmp_path, tiny), "--store", str(store)],
                          env=cli_env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage target_finetune failed: NonFiniteLossError:"), last
    st = ArtifactStore(str(store))
    assert st.has(keys[1]) and not st.has(keys[2]) and not st.has(keys[3])
    assert all(v == [] for v in st.verify_all().values()), st.verify_all()
    assert sorted(p.name for p in (store / "prefect").iterdir()) == sorted(keys[:2])
    assert st.list_docs("leases") == []

def test_tune_needs_an_explicit_search_section_and_init_search_prints_one(tmp_path):
    """A config for other data must not inherit the built-in example's space."""
    cfg = _write(tmp_path, {"target_finetune": {"epochs": 4}})
    store = tmp_path / "store"
    result = runner.invoke(app, ["tune", cfg, "--store", str(store)])
    assert result.exit_code == 2 and "no `search:` section" in result.output
    assert "--init-search" in result.output and not store.exists()
    printed = runner.invoke(app, ["tune", cfg, "--init-search"])
    assert printed.exit_code == 0, printed.output
    search = yaml.safe_load(printed.stdout)["search"]
    assert search["target_finetune"]["epochs"] == {"type": "int", "low": 2, "high": 8}
    with_search = _write(tmp_path, {"target_finetune": {"epochs": 4}, "search": search}, "s.yaml")
    assert load_config(with_search).search == search
    assert load_config().search and not load_config(cfg).search  # the built-in keeps its own


@pytest.mark.parametrize("args", [["run", "--bogus"], ["run", "--set"], ["cache", "gc", "--older-than"],
                                  ["plan", "a.yaml", "b.yaml"]])
def test_a_usage_error_is_one_plain_line_exit_2(tmp_path, args):
    done = subprocess.run([MEMOTUNE, *args], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert "╭" not in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_credentials_in_a_store_url_are_refused_and_never_shown(tmp_path):
    # s3fs took "user:pass@bucket" for a bucket name; botocore quoted it in its error
    done = subprocess.run([MEMOTUNE, "plan", "--store", "s3://AKIAXXXX:s3cr3tv@bucket/x"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert "AKIAXXXX" not in done.stderr and "s3cr3tv" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        "error: store URL s3://***@bucket/x: credentials in a store URL are not supported "
        "(they would reach logs); use the AWS_* environment variables, a profile or storage options"]
