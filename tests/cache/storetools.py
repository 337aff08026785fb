"""Helpers for the store tests (plain functions, no fakes)."""

from __future__ import annotations

from pathlib import Path


def make_dir(path: Path, files: dict[str, bytes]) -> Path:
    """A local stage output directory with the given relative files."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        p = path / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return path


def read_tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def key_of(n: int) -> str:
    return f"{n:064x}"


def json_record(key: str, stage: str = "finetune") -> bytes:
    """A result record as Prefect's JSON serializer writes it for a StageOutput."""
    import json

    output = {"stage": stage, "key": key, "uri": "x", "metrics": {}, "meta": {}, "compute_s": 1.0}
    return json.dumps({"metadata": {"storage_key": key, "serializer": {"type": "json"}},
                       "result": json.dumps(output)}).encode()
