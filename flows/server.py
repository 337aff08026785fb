"""A long-lived local Prefect server for the CLI, started on first use.

Without PREFECT_API_URL, Prefect starts a temporary server in every process
(about 7 s here), which would dominate a fully cached run. memotune instead
starts `prefect server start` once in the background (UI and API on
127.0.0.1:4200, or $MEMOTUNE_PREFECT_PORT) and reuses it from then on, so the
UI shows every run and its cached stages. PREFECT_API_URL (env or profile)
always wins; MEMOTUNE_PREFECT_SERVER=ephemeral keeps Prefect's temporary one.

Why not `prefect server start --background` / `prefect server stop`: the
background start connects the server's output to pipes of a parent that exits
at once (the server's later log writes then fail), and returns before the API
answers; memotune needs a server that keeps logging (to LOG_FILE), is waited
for until healthy, is reused when already up, and whose whole process group
stops with it. What Prefect does provide is used: the server itself, its
settings and its health endpoint.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from pathlib import Path

from flows.home import memotune_home

HOME = memotune_home()
PID_FILE = HOME / "prefect-server.pid"
LOG_FILE = HOME / "prefect-server.log"


def _port() -> int:
    return int(os.environ.get("MEMOTUNE_PREFECT_PORT", "4200"))


def api_url() -> str:
    return f"http://127.0.0.1:{_port()}/api"


def healthy(url: str, timeout: float = 1.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as r:
            return r.status == 200
    except OSError:
        return False


def configured_api() -> str | None:
    """PREFECT_API_URL from the environment or the active Prefect profile.

    Read without importing Prefect: its settings are fixed at import, so the
    URL chosen here must be in the environment before that.
    """
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    path = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home / "profiles.toml"))
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or data.get("active", "")
    return data.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") or None


def ensure_server(wait_s: float = 90.0) -> str | None:
    """Point this process at a running local server, starting one if needed.

    Returns the API URL, or None when Prefect's own configuration applies.
    """
    if configured_api() or os.environ.get("MEMOTUNE_PREFECT_SERVER") == "ephemeral":
        return None
    url = api_url()
    if not healthy(url):
        HOME.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PREFECT_SERVER_API_HOST="127.0.0.1",
                   PREFECT_SERVER_API_PORT=str(_port()), PREFECT_UI_API_URL=url,
                   PREFECT_SERVER_ANALYTICS_ENABLED="false")
        with open(LOG_FILE, "ab") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                 "--port", str(_port())], env=env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True)
        PID_FILE.write_text(str(proc.pid))
        deadline = time.monotonic() + wait_s
        while not healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                return None  # fall back to Prefect's temporary server; the log says why
            time.sleep(0.25)
    os.environ["PREFECT_API_URL"] = url
    return url


def stop_server() -> bool:
    """Stop the server this tool started (by its pid file); True when one was running."""
    try:
        pid = int(PID_FILE.read_text())
    except (OSError, ValueError):
        return False
    PID_FILE.unlink(missing_ok=True)
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True
