"""What the cache raises: errors whose messages name the store, never credentials."""

from __future__ import annotations

__all__ = ["CorruptEntryError", "EntryNotFoundError", "LockError", "StoreError"]


class StoreError(Exception):
    """A store operation failed; the message names the store URL, never credentials."""


class CorruptEntryError(StoreError):
    """An entry's manifest or one of its files does not match what was committed."""

    def __init__(self, message: str, *, key: str | None = None, file: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.file = file


class EntryNotFoundError(StoreError, KeyError):
    """No committed entry for a key (a StoreError that ``except KeyError`` also catches)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class LockError(RuntimeError):
    """The lock server failed or is unreachable; the message names its (redacted) URL."""
