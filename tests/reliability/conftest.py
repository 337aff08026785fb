"""The fault suite's fixtures: real `memotune` subprocesses on a real Prefect API.

Every probe drives the product as a user does: `memotune run` and `memotune
cache verify/gc` subprocesses (each test with its own HOME, so its own lock
folder), a store on file:// or on a moto S3 server of its own, and real
SIGKILL/SIGSTOP. Stage keys are computed in this process with the function
`memotune plan` uses, and every run's keys are checked against them
(`same_keys`). Each test logs its trials in `fault_log`; the table is printed
at the end of the session.

The reference objective of a config is that of a clean run in a store nobody
damages (`reference`); `warm_store` is a copy of a store holding one clean run
of the TINY config (all four stages committed, records written).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from faultkit import Cli, FaultLog, MotoServer, make_env, same_keys, stage_keys, variant

_LOG_KEY = pytest.StashKey[FaultLog]()


@pytest.fixture(scope="session")
def fault_log(request: pytest.FixtureRequest) -> FaultLog:
    """Session record of (probe, trials, held), printed by pytest_terminal_summary."""
    log = FaultLog()
    request.config.stash[_LOG_KEY] = log
    return log


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    log = config.stash.get(_LOG_KEY, None)
    if log is None or not log.rows:
        return
    terminalreporter.section("memotune fault probes")
    for line in log.table():
        terminalreporter.write_line(line)


@pytest.fixture
def cli(prefect_api: str, tmp_path: Path) -> Cli:
    """`memotune` subprocesses with this test's HOME (lock folder) and fetch folder."""
    return Cli(make_env(prefect_api, tmp_path), tmp_path / "configs")


class Reference:
    """Objectives of clean runs: one store, never damaged, only ever run to completion."""

    def __init__(self, cli: Cli, store: Path, base: Path) -> None:
        self.cli = cli
        self.store_url = f"file://{store}"
        self.base = base  # a snapshot of the store after its first (TINY) run
        self._done: dict[str, dict[str, Any]] = {}

    def summary(self, doc: dict[str, Any]) -> dict[str, Any]:
        name = " ".join(stage_keys(doc))  # configs with the same keys have the same outputs
        if name not in self._done:
            done = self.cli.run(doc, self.store_url, timeout=400)
            assert done.returncode == 0, done.stderr[-3000:]
            summary = json.loads(done.stdout)
            same_keys(summary, doc)  # the probes compute keys in this process
            self._done[name] = summary
        return self._done[name]


@pytest.fixture(scope="session")
def reference(prefect_api: str, tmp_path_factory: pytest.TempPathFactory) -> Reference:
    root = tmp_path_factory.mktemp("reference")
    ref = Reference(Cli(make_env(prefect_api, root), root / "configs"), root / "store",
                    root / "base")
    ref.summary(variant())  # the TINY config: the base every warm store starts from
    shutil.copytree(root / "store", ref.base, symlinks=True)
    return ref


@pytest.fixture
def warm_store(reference: Reference, tmp_path: Path) -> str:
    """file:// URL of a private copy of a store holding one clean TINY run."""
    shutil.copytree(reference.base, tmp_path / "store", symlinks=True)
    return f"file://{tmp_path / 'store'}"


@pytest.fixture
def own_moto(tmp_path: Path) -> Iterator[MotoServer]:
    """A moto S3 server for one test only (it may be paused or killed)."""
    server = MotoServer.start(tmp_path / "moto.log")
    try:
        yield server
    finally:
        server.stop()
