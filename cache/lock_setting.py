"""The --locks / MEMOTUNE_LOCKS setting, checked without importing Prefect.

The CLI checks it before it chooses Prefect's API URL, which Prefect reads once,
when it is first imported; cache.locks builds the lock manager from it.
"""

from __future__ import annotations

from cache.keys import redact

__all__ = ["REDIS_SCHEMES", "check_lock_setting"]

REDIS_SCHEMES = ("redis", "rediss", "redis+sentinel", "rediss+sentinel")


def check_lock_setting(setting: str) -> str:
    """`file` or a Redis URL; ValueError naming the setting otherwise."""
    if setting == "file":
        return setting
    scheme = setting.split("://", 1)[0].lower() if "://" in setting else ""
    if scheme not in REDIS_SCHEMES:
        raise ValueError(f"--locks / MEMOTUNE_LOCKS: expected 'file' or a redis:// URL, "
                         f"got {redact(setting)!r}")
    return setting
