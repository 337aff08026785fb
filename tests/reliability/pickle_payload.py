"""A pickle payload for the record probe: unpickling it creates a marker file.

Importable by `memotune` subprocesses (the probe puts this folder on their
PYTHONPATH), so the only thing between a planted record and the marker is
whether anything unpickles the record.
"""

from __future__ import annotations

from pathlib import Path


def touch(marker: str) -> str:
    Path(marker).write_text("unpickled\n")
    return marker


class Payload:
    """Pickles as a call of `touch(marker)`: whoever unpickles it runs that call."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (touch, (self.marker,))
