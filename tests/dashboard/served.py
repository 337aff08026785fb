"""The dashboard served by uvicorn in a thread on a free loopback port (for tests)."""

from __future__ import annotations

import socket
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    """The dashboard app of one store, served by uvicorn in a thread on a loopback port."""

    def __init__(self, store_url: str, prefect_ui: str | None = None) -> None:
        import uvicorn

        from dashboard.app import create_app

        self.app = create_app(store_url, prefect_ui=prefect_ui, poll_s=2.0)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "dashboard did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
