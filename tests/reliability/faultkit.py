"""Helpers of the fault suite (plain functions and small classes, no fakes).

`Cli` runs the installed `memotune` console script in subprocesses, `Proc` is
one started in its own session (so a SIGKILL reaches its whole process group),
`MotoServer` is a private moto S3 server that a probe may pause or kill, and
`FaultLog` collects the (probe, trials, held) table the suite prints.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cache.store import GARBAGE, UNFINISHED, ArtifactStore
from tests.flows.conftest import TINY

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
HERE = Path(__file__).resolve().parent
STAGES = ("data_prep", "intermediate_finetune", "target_finetune", "evaluate")


# ---------------------------------------------------------------------- configs and keys

def variant(sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The TINY config with dotted overrides, e.g. {"target_finetune.seed": 1}."""
    doc = copy.deepcopy(TINY)
    for dotted, value in (sets or {}).items():
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return doc


def stage_keys(doc: dict[str, Any]) -> list[str]:
    """The four stage keys of a config (the same function `memotune plan` uses)."""
    from flows.config import load_config
    from flows.plan import stage_keys as keys

    return [k for _, k, _ in keys(load_config(doc=doc))]


def same_keys(summary: dict[str, Any], doc: dict[str, Any]) -> None:
    """The run hashed the code this process hashed (else every expectation is off)."""
    assert [s["key"] for s in summary["stages"]] == stage_keys(doc), (
        "stage keys of this process and of the CLI differ: stages/ or cache/ changed "
        "during the session; the probes' expectations would be wrong")


def statuses(summary: dict[str, Any]) -> dict[str, str]:
    return {s["name"]: s["status"] for s in summary["stages"]}


# ---------------------------------------------------------------------- store checks

def damage(store_url: str, storage_options: dict | None = None) -> dict[str, list[str]]:
    """verify_all's findings other than sound entries and leftovers of killed writes."""
    report = ArtifactStore(store_url, storage_options).verify_all()
    return {k: v for k, v in report.items() if v and not set(v) <= {GARBAGE, UNFINISHED}}


def unclean(store_url: str) -> dict[str, list[str]]:
    """Every finding of verify_all, garbage included (empty: a clean store)."""
    return {k: v for k, v in ArtifactStore(store_url).verify_all().items() if v}


# ---------------------------------------------------------------------- subprocesses

def make_env(prefect_api: str, root: Path) -> dict[str, str]:
    """Environment of `memotune` subprocesses: the session's Prefect API, HOME under root."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "PREFECT_API", "MEMOTUNE_"))}
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(PREFECT_API_URL=prefect_api, PREFECT_SERVER_ANALYTICS_ENABLED="false",
               HOME=str(home), MEMOTUNE_FETCH_DIR=str(root / "fetch"),
               COLUMNS="400")  # rich wraps at 80 columns without a terminal
    return env


def last_line(text: str) -> str:
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


@dataclass
class Proc:
    """A `memotune` process in its own session; output goes to files (no pipe stalls)."""

    popen: subprocess.Popen
    out: Path
    err: Path
    started: float

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill(self) -> bool:
        """SIGKILL the whole process group; True if it was still running."""
        was_alive = self.alive()
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait()
        return was_alive

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout=timeout)

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        return json.loads(self.stdout)


class Cli:
    """The installed `memotune` command with one environment and a config folder."""

    def __init__(self, env: dict[str, str], config_dir: Path) -> None:
        self.env = env
        self.config_dir = config_dir
        self.home = Path(env["HOME"])
        self._n = 0

    @property
    def lock_dir(self) -> Path:
        return self.home / ".memotune" / "locks"

    def config(self, doc: dict[str, Any]) -> str:
        """A YAML file of doc (named by its content)."""
        text = yaml.safe_dump(doc, sort_keys=True)
        path = self.config_dir / f"cfg-{hashlib.sha256(text.encode()).hexdigest()[:12]}.yaml"
        self.config_dir.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            path.write_text(text)
        return str(path)

    def call(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return subprocess.run([MEMOTUNE, *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout)

    def run(self, doc: dict[str, Any], store_url: str,
            timeout: float = 300) -> subprocess.CompletedProcess:
        return self.call("run", self.config(doc), "--json", "--store", store_url,
                         timeout=timeout)

    def start(self, doc: dict[str, Any], store_url: str,
              env: dict[str, str] | None = None) -> Proc:
        self._n += 1
        logs = self.config_dir.parent / "procs"
        logs.mkdir(parents=True, exist_ok=True)
        out, err = logs / f"{self._n}.out", logs / f"{self._n}.err"
        with open(out, "wb") as o, open(err, "wb") as e:
            popen = subprocess.Popen(
                [MEMOTUNE, "run", self.config(doc), "--json", "--store", store_url],
                env=env or self.env, stdout=o, stderr=e, start_new_session=True)
        return Proc(popen, out, err, time.monotonic())

    def verify(self, store_url: str) -> subprocess.CompletedProcess:
        return self.call("cache", "verify", "--store", store_url)

    def gc(self, store_url: str, *args: str) -> subprocess.CompletedProcess:
        return self.call("cache", "gc", "--store", store_url, *args)


def wait_for(cond: Callable[[], bool], proc: Proc | None, timeout: float,
             poll: float = 0.005) -> bool:
    """Poll cond until true (True), or until proc exits or timeout passes (False)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if (proc is not None and not proc.alive()) or time.monotonic() > deadline:
            return cond()
        time.sleep(poll)
    return True


# ---------------------------------------------------------------------- S3

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class MotoServer:
    """moto_server on loopback, owned by one test (SIGSTOP/SIGKILL are fine)."""

    proc: subprocess.Popen
    endpoint: str
    log: Path
    buckets: list[str] = field(default_factory=list)

    @classmethod
    def start(cls, log: Path) -> MotoServer:
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        with open(log, "wb") as f:
            proc = subprocess.Popen(
                [str(Path(sys.executable).parent / "moto_server"), "-p", str(port), "-H",
                 "127.0.0.1"], stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise RuntimeError(f"moto_server did not start on {endpoint}") from None
                time.sleep(0.1)
        return cls(proc, endpoint, log)

    @property
    def env(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ENDPOINT_URL_S3": self.endpoint}

    @functools.cached_property
    def client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client("s3", region_name="us-east-1", endpoint_url=self.endpoint,
                            aws_access_key_id="testing", aws_secret_access_key="testing",
                            config=Config(connect_timeout=2, read_timeout=5,
                                          retries={"total_max_attempts": 1}))

    def new_bucket(self) -> str:
        name = f"memotune-faults-{uuid.uuid4().hex[:10]}"
        self.client.create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    @property
    def storage_options(self) -> dict[str, Any]:
        """For an ArtifactStore in the test process (not the env: s3fs caches instances)."""
        return {"endpoint_url": self.endpoint, "key": "testing", "secret": "testing",
                "skip_instance_cache": True}

    def has_manifest(self, bucket: str, prefix: str) -> bool:
        """Some entry under prefix (a store's objects/) is committed."""
        try:
            listing = self.client.list_objects_v2(Bucket=bucket, Prefix=prefix)
        except Exception:
            return False
        return any(o["Key"].endswith("/manifest.json") for o in listing.get("Contents", []))

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---------------------------------------------------------------------- the fault table

@dataclass
class ProbeRow:
    probe: str
    trials: int = 0
    held: int = 0
    notes: list[str] = field(default_factory=list)


class FaultLog:
    """(probe, trials, held): a trial counts as held when its block ends without error."""

    def __init__(self) -> None:
        self.rows: dict[str, ProbeRow] = {}

    def row(self, probe: str) -> ProbeRow:
        return self.rows.setdefault(probe, ProbeRow(probe))

    @contextmanager
    def trial(self, probe: str) -> Iterator[ProbeRow]:
        row = self.row(probe)
        row.trials += 1
        yield row
        row.held += 1

    def note(self, probe: str, text: str) -> None:
        self.row(probe).notes.append(text)

    def table(self) -> list[str]:
        rows = list(self.rows.values())
        width = max(len("probe"), *(len(r.probe) for r in rows))
        lines = [f"{'probe':<{width}} | trials | held | notes",
                 f"{'-' * width}-|--------|------|------"]
        for r in rows:
            mark = "" if r.held == r.trials else "  <- FAILED"
            lines.append(f"{r.probe:<{width}} | {r.trials:>6} | {r.held:>4} | "
                         f"{'; '.join(r.notes)}{mark}")
        return lines
