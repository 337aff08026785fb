"""Content keys: what makes two stage runs "the same" for the cache.

A stage key is the sha256 of a canonical JSON document, so it must not depend
on incidental things (dict order, ``1`` vs ``1.0``, YAML formatting) and must
change whenever anything that affects the output changes (params, code, the
upstream key, the data). Keys are also the only text ever turned into a path
in the artifact store, hence ``is_key`` / ``check_key``.

No ML or Prefect imports here: planning and the tuners use this without them.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, BinaryIO

import fsspec
from fsspec.core import url_to_fs
from fsspec.utils import stringify_path

__all__ = [
    "DataSourceError",
    "canonical_json",
    "canonicalize",
    "check_key",
    "KeyMaterial",
    "chain_keys",
    "material_key",
    "fingerprint_inputs",
    "fingerprint_uris",
    "is_key",
    "redact",
    "source_hash",
    "stage_key",
    "without_paths",
]

KEY_SCHEMA = "memotune.stage_key/1"
FINGERPRINT_SCHEMA = "memotune.data_fingerprint/1"
INPUTS_SCHEMA = "memotune.data_inputs/1"
HASH_LIMIT_BYTES = 256 * 2**20
_CHUNK = 4 * 2**20
_KEY_RE = re.compile(r"[0-9a-f]{64}")


# --------------------------------------------------------------------------- canonical JSON


def canonicalize(obj: Any, _path: str = "$") -> Any:
    """Return a JSON-ready copy of ``obj`` that is equal for equal meanings.

    Dict keys are sorted, integral floats become ints (``1.0`` -> ``1``), tuples
    become lists. bool stays bool (it is an int subclass, but ``True`` and ``1``
    are different hyperparameters). Non-finite floats raise ValueError and
    anything that is not plain data raises TypeError, both naming the path, so a
    bad config fails at plan time instead of silently producing a bogus key.
    """
    if obj is None:
        return None
    if isinstance(obj, bool):
        return bool(obj)
    if isinstance(obj, int):
        return int(obj)  # plain int also for IntEnum and friends
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise ValueError(f"non-finite float {obj!r} at {_path} cannot be part of a key")
        return int(obj) if obj.is_integer() else float(obj)
    if isinstance(obj, str):
        return str.__str__(obj)  # plain str also for str-mixin enums
    if isinstance(obj, Mapping):
        out = {}
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"non-string dict key {k!r} at {_path}")
        for k in sorted(obj):
            out[str.__str__(k)] = canonicalize(obj[k], f"{_path}.{k}")
        return out
    if isinstance(obj, list | tuple):
        return [canonicalize(v, f"{_path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"cannot use {type(obj).__name__} at {_path} in a key (plain data only)")


def canonical_json(obj: Any) -> str:
    """Canonical JSON text of ``obj``: sorted keys, compact, ASCII only."""
    return json.dumps(
        canonicalize(obj),
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=True,
        allow_nan=False,
    )


def _sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# --------------------------------------------------------------------------- keys


def is_key(s: object) -> bool:
    """True iff ``s`` is a content key: exactly 64 lowercase hex characters."""
    return isinstance(s, str) and _KEY_RE.fullmatch(s) is not None


def check_key(s: object) -> str:
    """Return ``s`` if it is a key, else raise ValueError (keys become paths)."""
    if not is_key(s):
        shown = repr(s)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise ValueError(f"not a content key (64 lowercase hex chars): {shown}")
    return s  # type: ignore[return-value]


def stage_key(
    *,
    stage: str,
    version: str,
    code_hash: str,
    params: Mapping[str, Any],
    upstream: str | None,
    data_fingerprint: str | None = None,
) -> str:
    """The cache key of one stage run: sha256 of canonical JSON of its inputs.

    ``upstream`` is the previous stage's key (None for the first stage), which
    chains keys so a change anywhere upstream invalidates everything after it.
    """
    for name, value in (("stage", stage), ("version", version), ("code_hash", code_hash)):
        if not isinstance(value, str) or not value:
            raise TypeError(f"{name} must be a non-empty str, got {value!r}")
    if not isinstance(params, Mapping):
        raise TypeError(f"params must be a mapping, got {type(params).__name__}")
    if upstream is not None:
        check_key(upstream)
    if data_fingerprint is not None and not isinstance(data_fingerprint, str):
        raise TypeError(f"data_fingerprint must be str or None, got {data_fingerprint!r}")
    doc = {
        "schema": KEY_SCHEMA,
        "stage": stage,
        "version": version,
        "code_hash": code_hash,
        "params": params,
        "upstream": upstream,
        "data_fingerprint": data_fingerprint,
    }
    return _sha256_text(canonical_json(doc))


def source_hash(*objs: Any) -> str:
    """sha256 over the source code of modules/classes/functions.

    Part of a stage's key so that editing the stage's code invalidates its
    cached outputs. A module may be given by name ("stages.training"): its
    file is read, not imported, so planning a run never loads what only
    computing needs. Line endings are normalized so a CRLF checkout of the
    same code gives the same key.
    """
    if not objs:
        raise ValueError("source_hash needs at least one module, class or function")
    h = hashlib.sha256()
    for obj in objs:
        data = _source(obj).replace("\r\n", "\n").encode("utf-8")
        h.update(len(data).to_bytes(8, "big"))
        h.update(data)
    return h.hexdigest()


def _source(obj: Any) -> str:
    if isinstance(obj, str):  # a module by name: the text of its file
        spec = importlib.util.find_spec(obj)
        if spec is None or not spec.origin or not spec.has_location:
            raise ValueError(f"cannot read the source of module {obj!r}: no file")
        with open(spec.origin, encoding="utf-8", newline="") as f:
            text = f.read()
        return text if not text or text.endswith("\n") else text + "\n"  # as inspect reads it
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError) as e:
        raise ValueError(f"cannot read the source of {obj!r}: {e}") from e


@dataclass(frozen=True)
class KeyMaterial:
    """What one stage's key is made of, besides its upstream stage's key.

    `inputs`: the data files the stage declares, by role; None when the
    stage declares none (then no data fingerprint is in its key at all).
    """

    stage: str
    version: str
    code: tuple[Any, ...]
    params: Mapping[str, Any]
    inputs: Mapping[str, Sequence[str]] | None = None


def chain_keys(materials: Sequence[KeyMaterial]) -> list[str]:
    """The key rule of a pipeline, in one place: stage k's key is the sha256 of
    its name, version, code hash, params (input paths replaced by their roles),
    the key of stage k-1, and the fingerprint of its declared data inputs."""
    keys: list[str] = []
    upstream: str | None = None
    for m in materials:
        upstream = material_key(m, upstream)
        keys.append(upstream)
    return keys


def material_key(m: KeyMaterial, upstream: str | None) -> str:
    """One link of `chain_keys`: the key of m after the entry keyed `upstream`."""
    fingerprint = fingerprint_inputs(m.inputs) if m.inputs is not None else None
    return stage_key(stage=m.stage, version=m.version, code_hash=_code_hash(m.code),
                     params=without_paths(m.params, m.inputs or {}), upstream=upstream,
                     data_fingerprint=fingerprint)


@functools.cache
def _code_hash(code: tuple[Any, ...]) -> str:
    return source_hash(*code)


# --------------------------------------------------------------------------- data fingerprints

_USERINFO_RE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://)[^/@\s]+@")
# what a setting or query parameter holding a credential is called (it contains one)
SECRET_WORDS = "secret|password|passwd|token|signature|credential|key"
_SECRET_NAME_RE = re.compile(rf"(?i)(?:{SECRET_WORDS})")
_SECRET_PARAM_RE = re.compile(rf"(?i)\b([\w\-]*(?:{SECRET_WORDS})[\w\-]*)=([^&\s;,'\"]+)")


def is_secret_name(name: str) -> bool:
    """Whether a setting or parameter of this name holds a credential (never shown)."""
    return bool(_SECRET_NAME_RE.search(name))


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """Strip credentials from text that may contain URLs (for error messages).

    Removes ``user:pass@`` from URLs, the values of ``key=``/``secret=``-like
    query parameters, and any literal occurrence of the given secret strings.
    """
    text = _USERINFO_RE.sub(r"\1***@", text)
    text = _SECRET_PARAM_RE.sub(r"\1=***", text)
    for s in secrets:
        if s and len(s) >= 4:
            text = text.replace(s, "***")
    return text


class DataSourceError(FileNotFoundError):
    """A data source named in a config does not exist (fails planning early)."""

    def __init__(self, uri: str) -> None:
        self.uri = redact(uri)
        super().__init__(f"data file not found: {self.uri}")

    def __str__(self) -> str:
        return str(self.args[0])


# (protocol, path, size, change marker) -> sha256: a file is read once per process
# while it is unchanged (the CLI's plan and the flow key the same files)
_CONTENT_HASHES: dict[tuple, str] = {}


def mtime_of(info: Mapping[str, Any]) -> float | None:
    """Modification time from an fsspec info dict, whatever the backend calls it."""
    for name in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(name)
        if value in (None, ""):
            continue
        if hasattr(value, "timestamp"):
            return float(value.timestamp())
        if isinstance(value, int | float):
            return float(value)
    return None


def _etag(info: Mapping[str, Any]) -> str | None:
    etag = info.get("ETag") or info.get("etag") or info.get("md5Hash")
    return str(etag).strip('"') if etag else None


def hash_stream(src: BinaryIO, out: BinaryIO | None = None, chunk: int = _CHUNK) -> tuple[int, str]:
    """Stream src (to out, if given) in chunks -> (size, sha256 hex): the one hashing loop."""
    h, size = hashlib.sha256(), 0
    while data := src.read(chunk):
        h.update(data)
        size += len(data)
        if out is not None:
            out.write(data)
    return size, h.hexdigest()


def _file_mark(fs: fsspec.AbstractFileSystem, path: str, info: Mapping, limit: int) -> dict:
    size = int(info.get("size") or 0)
    if size <= limit:
        marker = _etag(info) or mtime_of(info)
        memo = (fs.protocol, path, size, marker) if marker is not None else None
        if memo is None or memo not in _CONTENT_HASHES:
            with fs.open(path, "rb") as f:
                digest = hash_stream(f)[1]
            if memo is None:
                return {"size": size, "sha256": digest}
            _CONTENT_HASHES[memo] = digest
        return {"size": size, "sha256": _CONTENT_HASHES[memo]}
    # Too big to hash on every plan: trust the store's change markers.
    etag = _etag(info)
    if etag:
        return {"size": size, "etag": etag}
    return {"size": size, "mtime": mtime_of(info)}


def _glob_base(path: str) -> str:
    magic = min(i for i, c in enumerate(path) if c in "*?[")
    return path[:magic].rsplit("/", 1)[0]


def fingerprint_uris(
    uris: Sequence[str],
    storage_options: dict | None = None,
    *,
    hash_limit: int = HASH_LIMIT_BYTES,
) -> str:
    """Fingerprint of data source files, for the first stage's key.

    Each URI is a local path or fsspec URL; globs and directories expand to
    their files (sorted, named relative to the glob's static prefix / the
    directory). Files up to ``hash_limit`` bytes are hashed (streaming); bigger
    ones contribute size + ETag (or mtime). The order of ``uris`` matters (train
    and eval files are different roles); their location does not, only content
    and relative names. Missing sources raise DataSourceError.
    """
    if isinstance(uris, str):
        raise TypeError("uris must be a sequence of URIs, not a single str")
    parts = []
    for raw in uris:
        uri = stringify_path(raw)
        fs, path = url_to_fs(uri, **(storage_options or {}))
        files: dict[str, dict] = {}
        if any(c in path for c in "*?["):
            base = _glob_base(path)
            infos = fs.glob(path, detail=True)
        else:
            try:
                info = fs.info(path)
            except FileNotFoundError:
                raise DataSourceError(uri) from None
            if info.get("type") == "directory":
                base = path.rstrip("/")
                infos = fs.find(path, detail=True)
            else:
                base = None
                infos = {path: info}
        for name in sorted(infos):
            info = infos[name]
            if info.get("type") == "directory":
                continue
            rel = name[len(base) :].lstrip("/") if base is not None else ""
            files[rel] = _file_mark(fs, name, info, hash_limit)
        if not files:
            raise DataSourceError(uri)
        parts.append(files)
    return _sha256_text(canonical_json({"schema": FINGERPRINT_SCHEMA, "sources": parts}))


def fingerprint_inputs(inputs: Mapping[str, Sequence[str]],
                       storage_options: dict | None = None) -> str:
    """Fingerprint of a stage's data inputs by role ({"target.train": [uris], ...}).

    Each role's files are fingerprinted by content and relative names
    (``fingerprint_uris``), so the dict order of the roles and where the files
    sit do not matter. No inputs: the fingerprint of no files.
    """
    if not inputs:
        return fingerprint_uris([], storage_options)
    roles = {role: fingerprint_uris(list(uris), storage_options)
             for role, uris in inputs.items()}
    return _sha256_text(canonical_json({"schema": INPUTS_SCHEMA, "inputs": roles}))


def without_paths(params: Any, inputs: Mapping[str, Sequence[str]]) -> Any:
    """params with each input file's path or URL replaced by its role, for the key.

    The data fingerprint already holds the files' content: with the paths
    left in, the same data spelled as a relative path, an absolute one or in
    another folder would get another key and recompute everything.
    """
    names = {uri: f"<{role}[{i}]>" for role, uris in inputs.items()
             for i, uri in enumerate(uris)}
    if not names:
        return params

    def walk(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {k: walk(v) for k, v in node.items()}
        if isinstance(node, list | tuple):
            return [walk(v) for v in node]
        if isinstance(node, str):
            return names.get(node, node)
        return node

    return walk(params)
