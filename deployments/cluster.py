"""A memotune cluster on one machine: the production layout, as local processes.

    Postgres        Prefect's database (instead of SQLite: many workers write at once)
    Prefect server  API + UI, on Postgres
    Redis           stage locks across hosts (--locks / MEMOTUNE_LOCKS redis://...)
    S3              the shared artifact store (moto_server here; any S3 endpoint in production)
    N workers       `prefect worker start --pool memotune-pool`, each with its own HOME,
                    temp and fetch folders, sharing nothing with the others but the network

deployments/compose.yaml runs the same pieces as containers. This module starts
them as processes on loopback, for the multi-host test and to try scale-out on
one machine:

    python deployments/cluster.py up --workers 2 --dir /tmp/memotune-cluster
    # prints the environment to export (PREFECT_API_URL, MEMOTUNE_STORE, ...)
    python deployments/cluster.py down --dir /tmp/memotune-cluster

Postgres refuses to run as root; as root its processes run as the `postgres`
user (Debian's package creates it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PG_BIN = Path("/usr/lib/postgresql/15/bin")
POOL = "memotune-pool"
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f} s")
        time.sleep(0.2)


def signal_group(proc: subprocess.Popen, sig: int) -> None:
    """Signal a process and everything it started (its process group), if still there."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        pass


def stop_group(proc: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM a process group, SIGKILL what is left after grace_s: a Prefect worker can
    take a minute to shut down gracefully on a loaded machine, and a stop must not fail
    because of it."""
    if proc.poll() is not None:
        return
    signal_group(proc, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        signal_group(proc, signal.SIGKILL)
        proc.wait(timeout=60)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as r:
            return r.status < 500
    except OSError:
        return False


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@dataclass
class Cluster:
    """The pieces of a cluster under `root`; start() / stop(), or `with running(...)`."""

    root: Path
    workers: int = 2
    worker_env: dict[str, str] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    bucket: str = field(default_factory=lambda: f"memotune-{uuid.uuid4().hex[:8]}")

    # ------------------------------------------------------------------ addresses

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['prefect']}/api"

    @property
    def s3_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.ports['s3']}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports['redis']}/0"

    @property
    def database_url(self) -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.ports['postgres']}/prefect"

    @property
    def store_url(self) -> str:
        return f"s3://{self.bucket}/store"

    def client_env(self) -> dict[str, str]:
        """What a user (or a test) exports to use the cluster from this machine."""
        return {"PREFECT_API_URL": self.api_url, "MEMOTUNE_STORE": self.store_url,
                "MEMOTUNE_LOCKS": self.redis_url, "AWS_ENDPOINT_URL": self.s3_endpoint,
                "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "MEMOTUNE_HOME": str(REPO)}

    # ------------------------------------------------------------------ pieces

    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None,
               cwd: Path | None = None) -> subprocess.Popen:
        log = open(self.root / f"{name}.log", "ab")  # noqa: SIM115 (closed with the process)
        proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _postgres_dir(self) -> Path:
        """root/postgres, or, as root, a folder the postgres user can reach (pytest's
        and many temp folders are private to root)."""
        if os.geteuid() != 0:
            return self.root / "postgres"
        link = self.root / "postgres"
        if not link.exists():
            data = Path(tempfile.mkdtemp(prefix="memotune-pg-"))
            shutil.chown(data, "postgres", "postgres")
            link.symlink_to(data)
        return link.resolve()

    def start_postgres(self) -> None:
        data = self._postgres_dir()
        port = self.ports["postgres"] = free_port()
        if not (data / "PG_VERSION").exists():
            data.mkdir(parents=True, exist_ok=True)
            done = subprocess.run(_as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U",
                                                "postgres", "--auth=trust", "-E", "UTF8"]),
                                  capture_output=True, text=True)
            if done.returncode != 0:
                raise RuntimeError(f"initdb failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
        proc = self._spawn("postgres", _as_postgres([
            str(PG_BIN / "postgres"), "-D", str(data), "-p", str(port), "-h", "127.0.0.1",
            "-k", str(data), "-c", "max_connections=200", "-c", "fsync=off"]))
        wait_for(lambda: subprocess.run(
            [str(PG_BIN / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
            capture_output=True).returncode == 0, "postgres", 60, proc)
        subprocess.run([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U",
                        "postgres", "prefect"], capture_output=True)  # exists on a restart

    def start_redis(self) -> None:
        port = self.ports["redis"] = free_port()
        proc = self._spawn("redis", ["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                                     "--save", "", "--appendonly", "no"])

        def pong() -> bool:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    return s.recv(16).startswith(b"+PONG")
            except OSError:
                return False

        wait_for(pong, "redis-server", 30, proc)

    def start_s3(self) -> None:
        port = self.ports["s3"] = free_port()
        proc = self._spawn("s3", [str(BIN / "moto_server"), "-p", str(port), "-H", "127.0.0.1"])
        wait_for(lambda: _http_ok(self.s3_endpoint), "moto_server", 60, proc)
        import boto3

        boto3.client("s3", region_name="us-east-1", endpoint_url=self.s3_endpoint,
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=self.bucket)

    def start_prefect(self) -> None:
        port = self.ports["prefect"] = free_port()
        env = dict(os.environ, PREFECT_API_DATABASE_CONNECTION_URL=self.database_url,
                   PREFECT_HOME=str(self.root / "prefect-home"),
                   PREFECT_SERVER_API_HOST="127.0.0.1", PREFECT_SERVER_API_PORT=str(port),
                   PREFECT_UI_API_URL=self.api_url, PREFECT_SERVER_ANALYTICS_ENABLED="false")
        env.pop("PREFECT_API_URL", None)
        proc = self._spawn("prefect", [str(BIN / "python"), "-m", "prefect", "server", "start",
                                       "--host", "127.0.0.1", "--port", str(port)], env=env)
        wait_for(lambda: _http_ok(f"{self.api_url}/health"), "prefect server", 180, proc)

    def prefect(self, *args: str) -> None:
        """Run a `prefect` CLI command against the cluster (from the repository root)."""
        env = {**os.environ, **self.client_env(), "HOME": str(self.root / "client")}
        done = subprocess.run([str(BIN / "python"), "-m", "prefect", "--no-prompt", *args],
                              env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout[-2000:]}"
                               f"{done.stderr[-2000:]}")

    def deploy(self) -> None:
        """The work pool and the shipped deployments/prefect.yaml's pipeline deployment."""
        self.prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
        self.prefect("deploy", "--prefect-file", "deployments/prefect.yaml",
                     "--name", "offline-default")

    def worker_home(self, i: int) -> Path:
        return self.root / f"worker-{i}"

    def start_worker(self, i: int) -> subprocess.Popen:
        """A process worker that shares nothing with the others but the network."""
        home = self.worker_home(i)
        for sub in ("home", "tmp", "fetch"):
            (home / sub).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.client_env(), "HOME": str(home / "home"),
               "TMPDIR": str(home / "tmp"), "MEMOTUNE_FETCH_DIR": str(home / "fetch"),
               "OMP_NUM_THREADS": "1", "PREFECT_WORKER_QUERY_SECONDS": "1", **self.worker_env}
        return self._spawn(f"worker-{i}", [str(BIN / "python"), "-m", "prefect", "worker",
                                           "start", "--pool", POOL, "--name", f"worker-{i}"],
                           env=env, cwd=home)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        self.start_postgres()
        self.start_redis()
        self.start_s3()
        self.start_prefect()
        self.deploy()
        for i in range(self.workers):
            self.start_worker(i)
        (self.root / "cluster.json").write_text(json.dumps(
            {"pids": {n: p.pid for n, p in self.procs.items()}, "env": self.client_env()},
            indent=1))

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal a piece and everything it started (its process group)."""
        proc = self.procs[name]
        signal_group(proc, sig)
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.wait(timeout=60)

    def stop(self, remove_data: bool = True) -> None:
        for name in reversed(list(self.procs)):
            stop_group(self.procs[name])
        link = self.root / "postgres"
        if remove_data and link.is_symlink():
            shutil.rmtree(link.resolve(), ignore_errors=True)
            link.unlink()


@contextmanager
def running(root: Path, workers: int = 2, **kwargs) -> Iterator[Cluster]:
    cluster = Cluster(root=root, workers=workers, **kwargs)
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--dir", type=Path, default=Path("/tmp/memotune-cluster"))
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    if args.action == "down":
        info = json.loads((args.dir / "cluster.json").read_text())
        for pid in info["pids"].values():
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        print("stopped")
        return 0
    cluster = Cluster(root=args.dir, workers=args.workers)
    cluster.start()
    for k, v in cluster.client_env().items():
        print(f"export {k}={v}")
    print(f"# Prefect UI: {cluster.api_url.removesuffix('/api')}; logs in {args.dir}/*.log; "
          f"stop with: python deployments/cluster.py down --dir {args.dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
