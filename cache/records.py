"""The shape of a result record beside an entry, checked without deserializing it.

Prefect writes its result record of a stage run to ``prefect/<key>`` in the
store. Its metadata names a serializer, and Prefect would load the record with
whatever serializer it names: pickle included, and even the JSON serializer
imports its decoder by the name the record gives. Anyone who can write to a
shared bucket could then run code on every machine that reads it. So nothing
here deserializes a record through Prefect: this module only checks, with
plain ``json``, that a record is what memotune writes (Prefect's JSON
serializer, the StageOutput of the same key), and the Prefect integration
serves a hit from the entry's manifest, never from the record's content.
"""

from __future__ import annotations

import json
from typing import Any

from cache.keys import is_key

__all__ = ["DamagedRecordError", "check_record"]


class DamagedRecordError(ValueError):
    """A result record that is not a JSON record of the StageOutput of its key."""


def check_record(data: bytes, key: str) -> dict[str, Any]:
    """The StageOutput a record holds, or DamagedRecordError saying what is wrong."""

    def bad(reason: str) -> DamagedRecordError:
        return DamagedRecordError(f"prefect record {key}: {reason}")

    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise bad("not JSON") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        raise bad("not a result record")
    serializer = doc["metadata"].get("serializer")
    kind = serializer.get("type") if isinstance(serializer, dict) else None
    if kind != "json":
        raise bad(f"serializer is {kind!r}, not 'json' (never loaded)")
    result = doc.get("result")
    try:
        output = json.loads(result) if isinstance(result, str | bytes) else None
    except (ValueError, UnicodeDecodeError):
        raise bad("result is not JSON") from None
    if not isinstance(output, dict) or not is_key(output.get("key")):
        raise bad("result is not a stage output")
    if output["key"] != key:
        raise bad(f"result is the output of another key ({output['key']})")
    return output
