"""Where memotune keeps its local state by default: ~/.memotune.

The store (`memotune --store` default), the stage locks and the local Prefect
server's pid and log files live under it. One place that spells it; no imports
beyond pathlib, so any module (the CLI, the server helper) may use it cheaply.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["memotune_home"]


def memotune_home() -> Path:
    """~/.memotune of the current user (HOME as it is now)."""
    return Path.home() / ".memotune"
