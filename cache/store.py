"""The artifact store: stage outputs under one fsspec URL, keyed by content key.

Layout under the root URL (file://, plain path, s3://, memory://)::

    objects/<key>/files/<relative paths...>   the entry's files
    objects/<key>/manifest.json               written LAST: the entry exists iff this does
    prefect/<key>                             Prefect's result record (written by the
                                              Prefect integration after the commit)
    studies/<name>/... (any validated name)   small JSON docs (put_json/get_json); never
                                              under objects/ or prefect/

Object-store rules, so the same code is correct on S3: every object is written
whole in one put (no appends, no renames of directories), and nothing in a hot
path lists a prefix (listing only in ls/gc/verify_all). A crash before the
manifest write leaves garbage for gc, never a half entry. Only content keys
(``check_key``) and validated JSON doc names ever become store paths; nothing
is unpickled, manifests and docs are JSON.

What differs between local disk and object stores (atomic writes, probing,
directories, handing out files in place) sits behind ``_Backend``, chosen once
when the store is made.

Concurrent commits of the *same* key must be serialized by the caller (the
Prefect lock manager does); the store re-checks for a manifest right before
writing its own to keep the window small.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, BinaryIO, Protocol

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from cache.errors import CorruptEntryError, EntryNotFoundError, StoreError
from cache.keys import check_key, hash_stream, is_key, is_secret_name, mtime_of, redact
from cache.leases import LEASES, live_keys
from cache.records import DamagedRecordError, check_record

__all__ = [
    "ArtifactStore",
    "CorruptEntryError",
    "EntryNotFoundError",
    "FileRecord",
    "GcReport",
    "Manifest",
    "StoreError",
]

MANIFEST = "manifest.json"
GARBAGE = "no manifest (uncommitted garbage)"
UNFINISHED = "unfinished write of a killed process (garbage)"
ORPHAN_RECORD = "prefect record without a manifest (orphan)"
MANIFEST_FORMAT = 1
_CHUNK = 8 * 2**20
_DOC_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_\-./]*")
_RESERVED_TOP = {"objects", "prefect"}  # entries and their records: keys only
# Probe settings for open(): an unreachable S3 endpoint must fail in seconds,
# not after botocore's default 60 s connect timeout and 5 retries.
_PROBE_CONFIG = {"connect_timeout": 3, "read_timeout": 5}
# Every other S3 call: an outage (server paused or gone) must end an operation
# within S3_BOUND_S, not hang on botocore's and s3fs's default retry loops.
# Retries are botocore's alone (standard mode: timeouts and dropped connections),
# per request; s3fs's own loops are off, since they nest (its cat_file retries a
# call that retries: 3 x 3 read timeouts, seen as a run hung > 2 min on a paused
# server). Worst case per operation: S3_ATTEMPTS x (connect or read timeout) plus
# botocore's short backoff, for its first failing request: the outage breaker
# (OUTAGE_HOLD_S) fails the requests after it at once.
S3_ATTEMPTS = 3
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 15,
             "retries": {"total_max_attempts": S3_ATTEMPTS, "mode": "standard"}}
S3_BOUND_S = S3_ATTEMPTS * (15 + 5) + 5
# Object stores and file systems the store is tested on (fsspec has many more
# protocols, some of which are read-only or archives: refuse those by name).
SUPPORTED_PROTOCOLS = ("file", "local", "s3", "s3a", "memory")


def _io_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [OSError]
    try:  # botocore only exists where s3fs is installed; the cache must not need it
        from botocore.exceptions import BotoCoreError, ClientError

        errors += [BotoCoreError, ClientError]
    except ImportError:
        pass
    return tuple(errors)


_IO_ERRORS = _io_errors()


def _outage_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the store is unreachable (not a missing key or a refusal)."""
    errors: list[type[BaseException]] = [TimeoutError, ConnectionError]
    try:
        from botocore.exceptions import ConnectionError as BotoConnectionError
        from botocore.exceptions import HTTPClientError

        errors += [BotoConnectionError, HTTPClientError]
    except ImportError:
        pass
    return tuple(errors)


_OUTAGE_ERRORS = _outage_errors()
# After a store call fails because the store is unreachable, later calls to the
# same store fail at once for this long instead of each waiting out its own
# timeouts (Prefect swallows a failed cache lookup as a miss, and the run would
# then wait again): an outage costs one operation's bound, not one per call.
OUTAGE_HOLD_S = 60.0
_outages: dict[tuple[str, str], tuple[float, str]] = {}


def _bound_calls(fs: Any) -> None:
    """A hard deadline, S3_BOUND_S, on every S3 API call of fs (botocore's retries
    included). The timeouts do not cover everything: a PUT waits for the server's
    "100 Continue" with no timeout at all (a paused server hung a run for minutes
    there). s3fs sends every API call through `_call_s3`; fsspec shares one
    filesystem object between stores with the same options, so it is wrapped once."""
    if getattr(fs, "_memotune_bounded", False):
        return
    call = fs._call_s3

    async def bounded(*args: Any, **kwargs: Any) -> Any:
        try:
            return await asyncio.wait_for(call(*args, **kwargs), S3_BOUND_S)
        except TimeoutError:  # not a TimeoutError out: fsspec would drop the message
            raise ConnectionError(f"no answer from the S3 server within {S3_BOUND_S} s") from None

    fs._call_s3 = bounded
    fs._memotune_bounded = True


def _check_file_name(name: object) -> str:
    """A relative POSIX path inside an entry: no traversal, no absolute, no backslash."""
    if not isinstance(name, str) or not name or name.startswith("/") or "\\" in name:
        raise ValueError(f"bad file name in entry: {name!r}")
    if any(part in ("", ".", "..") for part in name.split("/")):
        raise ValueError(f"bad file name in entry: {name!r}")
    if any(ord(c) < 32 for c in name):
        raise ValueError(f"bad file name in entry: {name!r}")
    return name


def _check_doc_name(name: object) -> str:
    """Names of put_json/get_json docs: lowercase, no traversal, not in entry namespaces."""
    if (
        not isinstance(name, str)
        or not _DOC_NAME_RE.fullmatch(name)
        or ".." in name
        or any(part in ("", ".") for part in name.split("/"))
        or name.split("/", 1)[0] in _RESERVED_TOP
    ):
        raise ValueError(f"bad JSON document name: {name!r}")
    return name


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------------------- manifests


def _content_key(value: str) -> str:
    if not is_key(value):
        raise ValueError("not a content key")
    return value


def _sha256_hex(value: str) -> str:
    if not is_key(value):  # same shape as a content key: 64 lowercase hex
        raise ValueError("not 64 lowercase hex characters")
    return value


def _known_format(value: int) -> int:
    if value != MANIFEST_FORMAT:
        raise ValueError(f"unsupported format {value!r}")
    return value


# Strict: a manifest is the commit record, so nothing in it is coerced ("1" is not 1,
# true is not 1), unknown fields are refused and times must be finite.
_STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)


class FileRecord(BaseModel):
    """One committed file: its path inside the entry, size and sha256."""

    model_config = ConfigDict(**_STRICT, frozen=True)

    name: Annotated[str, AfterValidator(_check_file_name)]  # never escapes the entry
    size: Annotated[int, Field(ge=0)]
    sha256: Annotated[str, AfterValidator(_sha256_hex)]


class Manifest(BaseModel):
    """What a committed entry holds; written last, so its presence means "complete"."""

    model_config = _STRICT

    key: Annotated[str, AfterValidator(_content_key)]
    stage: str
    files: list[FileRecord]
    meta: dict[str, Any]
    compute_s: float  # strict still takes an int (12 -> 12.0), as from_json always did
    created: float
    format: Annotated[int, AfterValidator(_known_format)] = MANIFEST_FORMAT

    @model_validator(mode="after")
    def _unique_names(self) -> Manifest:
        if len({f.name for f in self.files}) != len(self.files):
            raise ValueError("duplicate file names")
        return self

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        """The manifest's bytes on disk; any change would strand existing stores."""
        return json.dumps(self.model_dump(), sort_keys=True, indent=1, allow_nan=False,
                          ensure_ascii=True)

    @classmethod
    def from_json(
        cls, text: str | bytes, *, key: str | None = None, source: str | None = None
    ) -> Manifest:
        """Parse and validate a manifest; anything off raises CorruptEntryError.

        Strict on purpose: a manifest is the commit record, and a malformed one
        (or one whose file names try to escape the entry) must not be trusted.
        The message names the manifest (and so its key) and the bad field.
        """
        doc: Any = None

        def bad(reason: str) -> CorruptEntryError:
            named = key if key is not None else doc.get("key") if isinstance(doc, dict) else None
            where = source or (f"objects/{named}/{MANIFEST}" if is_key(named) else MANIFEST)
            return CorruptEntryError(f"corrupt manifest {where}: {reason}", key=key, file=MANIFEST)

        try:
            doc = json.loads(text)  # json, not pydantic's parser: meta reads as it always did
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        if "format" not in doc:  # defaulted for new manifests only: a stored one states it
            raise bad("format: Field required")
        try:
            m = cls.model_validate(doc)
        except ValidationError as e:
            raise bad(_first_problem(e, doc)) from None
        if key is not None and m.key != key:
            raise bad(f"manifest is for key {m.key}")
        return m


def _first_problem(error: ValidationError, doc: dict[str, Any]) -> str:
    """'<field>: <why>' for the first thing pydantic refused, naming the file if it was one."""
    problems = error.errors(include_url=False)
    first = problems[0]
    loc = first["loc"]
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    if len(loc) > 2 and loc[0] == "files" and isinstance(loc[1], int) and loc[2] != "name":
        name = _file_name_at(doc, loc[1])
        if name is not None:
            where += f" of {name!r}"
    why = first["msg"].removeprefix("Value error, ")
    if first["type"] not in ("value_error", "missing", "extra_forbidden"):
        shown = repr(first.get("input"))
        why += f", got {shown if len(shown) <= 80 else shown[:77] + '...'}"
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{where or 'manifest'}: {why}{more}"


def _file_name_at(doc: dict[str, Any], i: int) -> str | None:
    files = doc.get("files")
    rec = files[i] if isinstance(files, list) and i < len(files) else None
    name = rec.get("name") if isinstance(rec, dict) else None
    return name if isinstance(name, str) else None


@dataclass
class GcReport:
    """What gc removed (or would remove, with dry_run)."""

    removed_garbage: list[str] = field(default_factory=list)
    removed_entries: list[str] = field(default_factory=list)
    removed_records: list[str] = field(default_factory=list)
    removed_strays: list[str] = field(default_factory=list)
    kept_leased: list[str] = field(default_factory=list)
    freed_bytes: int = 0
    dry_run: bool = False


def _size_of(infos: Mapping[str, Mapping]) -> int:
    return sum(int(i.get("size") or 0) for i in infos.values() if i.get("type") != "directory")


def _expired(entries: list[Manifest], older_than_s: float | None, max_bytes: int | None,
             leased: set[str]) -> tuple[list[Manifest], list[Manifest]]:
    """Entries (oldest first) that gc's age and size bounds remove, and the leased ones
    those bounds would have removed but that stay."""
    now = time.time()
    doomed: list[Manifest] = []
    spared: list[Manifest] = []
    if older_than_s is not None:
        for m in entries:
            if m.created < now - older_than_s:
                (spared if m.key in leased else doomed).append(m)
    if max_bytes is not None:
        kept = [m for m in entries if m not in doomed]
        total = sum(m.total_bytes for m in kept)
        for m in kept:  # oldest first
            if total <= max_bytes:
                break
            if m.key in leased:
                if m not in spared:
                    spared.append(m)
                continue
            doomed.append(m)
            total -= m.total_bytes
    return doomed, spared


def _is_temp(name: str) -> bool:
    """A temp file of `_put` (local stores write a temp file, then rename it)."""
    return name.startswith(".") and name.endswith(".tmp")


def _mismatch(rec: FileRecord, size: int, digest: str) -> str | None:
    """Why a file's bytes don't match its record, or None."""
    if size != rec.size:
        return f"size {size} != {rec.size} in the manifest"
    if digest != rec.sha256:
        return "sha256 differs from the manifest"
    return None


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    """Literal credential strings in storage_options, for ``redact`` to scrub from messages."""
    out: list[str] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            out += _secret_values(v)
        elif isinstance(v, str) and is_secret_name(str(k)):
            out.append(v)
    return out


def _local_files(local_dir: Path) -> list[tuple[str, Path]]:
    """Regular files under local_dir as sorted (relative POSIX name, path) pairs."""

    def fail(e: OSError) -> None:  # os.walk would silently skip unreadable dirs
        raise e

    out = []
    for root, dirs, names in os.walk(local_dir, onerror=fail):
        for d in dirs:
            if os.path.islink(os.path.join(root, d)):
                raise ValueError(f"cannot commit symlinked directory {os.path.join(root, d)}")
        for n in names:
            p = Path(root, n)
            if not p.is_file():
                raise ValueError(f"cannot commit {p}: not a regular file")
            out.append((_check_file_name(p.relative_to(local_dir).as_posix()), p))
    return sorted(out)


# --------------------------------------------------------------------------- backends


class _Backend(Protocol):
    """What differs between local disk and object stores; the store picks one in __init__."""

    def probe(self, create: bool) -> None:
        """Check once, quickly, that the root is there (making it with ``create``)."""

    def put(self, path: str, data: bytes) -> None:
        """Write one object whole, so no reader ever sees part of it."""

    def start_entry(self, files_dir: str) -> None:
        """Prepare an entry's files folder before its uploads (an empty entry included)."""

    def in_place(self, files_dir: str) -> Path | None:
        """A local path to use an entry's files without copying them, or None."""


class _LocalBackend:
    """Local disk: atomic renames, real directories, files handed out in place."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, options: dict) -> None:
        self.fs, self.root = fs, root

    @staticmethod
    def prepare(options: dict[str, Any]) -> None:
        """Storage options before the filesystem is made: parents of a file are created."""
        options.setdefault("auto_mkdir", True)

    def probe(self, create: bool) -> None:
        """The root must be a directory (made with ``create``)."""
        if create:
            os.makedirs(self.root, exist_ok=True)
        if not os.path.isdir(self.root):
            raise NotADirectoryError(f"{self.root} is not a directory")

    def put(self, path: str, data: bytes) -> None:
        """A temp file renamed over the target: a killed writer leaves only a .tmp file."""
        target = Path(path)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def start_entry(self, files_dir: str) -> None:
        """An empty entry still fetches as a directory."""
        os.makedirs(files_dir, exist_ok=True)

    def in_place(self, files_dir: str) -> Path | None:
        """The store's own files: no copy (callers treat them as read-only)."""
        return Path(files_dir)


class _RemoteBackend:
    """An object store (memory:// here, S3 below): one put per object, no real directories."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, options: dict) -> None:
        self.fs, self.root, self.options = fs, root, options

    @staticmethod
    def prepare(options: dict[str, Any]) -> None:
        """Storage options before the filesystem is made: nothing to add."""

    def probe(self, create: bool) -> None:
        """The root must exist (made with ``create``)."""
        if create:
            self.fs.makedirs(self.root, exist_ok=True)
        elif not self.fs.isdir(self.root):
            raise FileNotFoundError(f"{self.root} does not exist")

    def put(self, path: str, data: bytes) -> None:
        """One PUT: object stores replace objects whole."""
        self.fs.pipe_file(path, data)

    def start_entry(self, files_dir: str) -> None:
        """Nothing: prefixes exist through their objects."""

    def in_place(self, files_dir: str) -> Path | None:
        """None: remote files are downloaded (and cached) before use."""
        return None


class _S3Backend(_RemoteBackend):
    """S3: bounded timeouts and retries, no listing cache, a fast bucket probe."""

    def __init__(self, fs: fsspec.AbstractFileSystem, root: str, options: dict) -> None:
        super().__init__(fs, root, options)
        fs.retries = 1  # no s3fs retry loops: botocore's (S3_CONFIG) are the only ones
        _bound_calls(fs)

    @staticmethod
    def prepare(options: dict[str, Any]) -> None:
        """Storage options before the filesystem is made: see S3_CONFIG."""
        # s3fs caches listings; a stale cache would make has() lie after
        # another process commits or deletes.
        options.setdefault("use_listings_cache", False)
        # one request per small read: with more, s3fs first asks for the size (one more
        # request to wait for in an outage) to split a big read into parallel ranges
        options.setdefault("max_concurrency", 1)
        config = {**S3_CONFIG, **dict(options.get("config_kwargs") or {})}
        options["config_kwargs"] = config
        # fsspec reuses filesystems by their options: an endpoint read from the
        # environment must be one of them, or a store opened after the
        # environment changed would talk to the old endpoint
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get(
            "AWS_ENDPOINT_URL")
        if endpoint and "endpoint_url" not in options and \
                "endpoint_url" not in (options.get("client_kwargs") or {}):
            options["endpoint_url"] = endpoint

    def probe(self, create: bool) -> None:
        """HEAD the bucket with short timeouts and no retries: a wrong endpoint fails in
        seconds (``create`` does not make buckets)."""
        options = dict(self.options)
        config = dict(options.get("config_kwargs") or {})
        config.update(_PROBE_CONFIG, retries={"total_max_attempts": 1})
        options.update(config_kwargs=config, skip_instance_cache=True)
        probe = type(self.fs)(**options)
        probe.retries = 1  # s3fs's own retry loop for timeouts
        bucket = self.root.split("/", 1)[0]
        try:
            probe.info(bucket)  # HEAD bucket
        except FileNotFoundError:
            raise FileNotFoundError(f"bucket {bucket} does not exist") from None


def _backend_class(protocol: str) -> type[_LocalBackend] | type[_RemoteBackend]:
    """Local disk, memory:// or S3, by the URL's protocol (one of SUPPORTED_PROTOCOLS)."""
    if issubclass(fsspec.get_filesystem_class(protocol), LocalFileSystem):
        return _LocalBackend
    return _RemoteBackend if protocol == "memory" else _S3Backend


def _holds_copy_of(final: Path, m: Manifest) -> bool:
    """Whether a fetch-cache directory holds this manifest's files (sizes checked)."""
    try:
        cached = Manifest.from_json((final / MANIFEST).read_bytes(), key=m.key)
    except (OSError, CorruptEntryError):
        return False
    return cached == m and all(
        (final / "files" / r.name).is_file()
        and (final / "files" / r.name).stat().st_size == r.size
        for r in m.files
    )


class ArtifactStore:
    """Content-addressed stage outputs in one fsspec location.

    ``ArtifactStore.open(url)`` is the normal entry point (it checks the store
    is reachable once); the constructor does no I/O.
    """

    def __init__(
        self,
        url: str | os.PathLike,
        storage_options: dict | None = None,
        *,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        url = os.fspath(url)
        options = dict(storage_options or {})
        self._secrets = _secret_values(options)
        shown = self._redact(url)
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        if not url.strip() or url.strip() != url:
            raise StoreError(f"store URL {url!r}: empty or surrounded by spaces")
        if protocol not in SUPPORTED_PROTOCOLS:
            raise StoreError(f"store URL {shown}: unsupported protocol {protocol!r} "
                             f"(use a local path, file://, s3:// or memory://)")
        if "://" in url and not url.split("://", 1)[1].strip("/"):
            raise StoreError(f"store URL {shown}: no bucket or directory after {protocol}://")
        if "://" in url and "@" in url.split("://", 1)[1].split("/", 1)[0]:
            # s3fs would take "user:pass@bucket" as a bucket name and quote it in errors
            raise StoreError(f"store URL {shown}: credentials in a store URL are not supported "
                             f"(they would reach logs); use the AWS_* environment variables, "
                             f"a profile or storage options")
        try:
            backend = _backend_class(protocol)
            backend.prepare(options)
            self.fs, root = url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError, OSError) as e:
            raise StoreError(self._redact(f"cannot open store {shown}: {e}")) from None
        self._options = options
        self.storage_options: dict = dict(storage_options or {})  # as given, for other fsspec users
        self.root: str = root.rstrip("/") or root
        self.url: str = self.fs.unstrip_protocol(self.root)
        self._backend: _Backend = backend(self.fs, self.root, options)
        if not self.root.strip("/"):
            raise StoreError(self._redact(f"cannot open store {shown}: no bucket or directory"))
        base = cache_dir or os.environ.get("MEMOTUNE_FETCH_DIR")
        if not base:
            xdg = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
            base = Path(xdg) / "memotune" / "fetch"
        url_id = hashlib.sha256(self.url.encode()).hexdigest()[:16]
        self.cache_dir: Path = Path(base).expanduser() / url_id

    # ------------------------------------------------------------------ helpers

    def __repr__(self) -> str:
        return f"ArtifactStore({self._redact(self.url)!r})"

    def _redact(self, text: str) -> str:
        """Every message the store makes goes through here: no credentials in errors."""
        return redact(text, self._secrets)

    @contextmanager
    def _io(self, what: str) -> Iterator[None]:
        """Turn backend errors into StoreError naming the (redacted) store URL; during an
        outage of this store (see OUTAGE_HOLD_S), fail at once."""
        where = (self.url, str(self._options.get("endpoint_url", "")))
        down = _outages.get(where)
        if down is not None and time.monotonic() < down[0]:
            raise StoreError(down[1])
        try:
            yield
        except StoreError:
            raise
        except _IO_ERRORS as e:
            msg = self._redact(f"{what} failed on store {self.url}: {type(e).__name__}: {e}")
            if isinstance(e, _OUTAGE_ERRORS):
                _outages[where] = (time.monotonic() + OUTAGE_HOLD_S, msg)
            raise StoreError(msg) from None

    def _p(self, *parts: str) -> str:
        return "/".join((self.root, *parts))

    def _entry_dir(self, key: str) -> str:
        return self._p("objects", check_key(key))

    def _files_dir(self, key: str) -> str:
        return self._p("objects", check_key(key), "files")

    def _manifest_path(self, key: str) -> str:
        return self._p("objects", check_key(key), MANIFEST)

    def _file_path(self, key: str, name: str) -> str:
        return self._p("objects", check_key(key), "files", _check_file_name(name))

    def _exists(self, path: str) -> bool:
        """One request on every backend (a 1-byte read).

        s3fs's exists() answers a miss with HEAD + LIST and can consult its
        listing cache; a ranged read is a single GET and never cached.
        """
        try:
            self.fs.cat_file(path, start=0, end=1)
            return True
        except FileNotFoundError:
            return False

    def _put(self, path: str, data: bytes) -> None:
        """Write one object whole (see the backends), then forget any cached listing."""
        self._backend.put(path, data)
        self.fs.invalidate_cache(path)

    def _rm(self, path: str, recursive: bool = False) -> None:
        try:
            self.fs.rm(path, recursive=recursive)
        except FileNotFoundError:
            pass
        self.fs.invalidate_cache(path)

    def _stream(self, path: str, out: BinaryIO | None = None) -> tuple[int, str]:
        """Read a store file in chunks -> (size, sha256), copying to ``out`` if given."""
        with self.fs.open(path, "rb", block_size=_CHUNK) as f:
            return hash_stream(f, out, _CHUNK)

    def _upload(self, src: Path, dst: str) -> tuple[int, str]:
        """Copy one local file into the store, hashing the bytes actually sent."""
        with open(src, "rb") as f, self.fs.open(dst, "wb") as out:
            return hash_stream(f, out, _CHUNK)

    def _corrupt(self, key: str, name: str, reason: str) -> CorruptEntryError:
        msg = f"corrupt entry {key} in store {self.url}: file {name}: {reason}"
        return CorruptEntryError(self._redact(msg), key=key, file=name)

    def _check_record(self, key: str, rec: FileRecord, size: int, digest: str) -> None:
        if reason := _mismatch(rec, size, digest):
            raise self._corrupt(key, rec.name, reason)

    def _require(self, key: str) -> Manifest:
        m = self.manifest(key)
        if m is None:
            raise EntryNotFoundError(self._redact(f"no entry {key} in store {self.url}"))
        return m

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(
        cls,
        url: str | os.PathLike,
        storage_options: dict | None = None,
        create: bool = True,
        *,
        cache_dir: str | os.PathLike | None = None,
    ) -> ArtifactStore:
        """Open a store and check once, quickly, that it is reachable.

        Local: creates the root (with ``create``) and checks it is a directory.
        S3: checks the bucket exists with short timeouts and no retries, so a
        wrong endpoint fails in seconds. Raises StoreError otherwise.
        """
        store = cls(url, storage_options, cache_dir=cache_dir)
        try:
            store._backend.probe(create)
        except StoreError:
            raise
        except Exception as e:  # any failure to reach the store is reported the same way
            msg = f"cannot reach store {store.url}: {type(e).__name__}: {e}"
            raise StoreError(store._redact(msg)) from None
        return store

    # ------------------------------------------------------------------ entries

    def has(self, key: str) -> bool:
        """True iff a committed entry exists for key (its manifest; one request)."""
        path = self._manifest_path(key)
        with self._io(f"has {key}"):
            return self._exists(path)

    def manifest(self, key: str) -> Manifest | None:
        """The entry's manifest, None if not committed; CorruptEntryError if malformed."""
        path = self._manifest_path(key)
        with self._io(f"read manifest {key}"):
            try:
                text = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
        source = self._redact(self.fs.unstrip_protocol(path))
        return Manifest.from_json(text, key=key, source=source)

    def commit(
        self,
        key: str,
        local_dir: str | os.PathLike,
        *,
        stage: str,
        meta: Mapping[str, Any],
        compute_s: float,
    ) -> Manifest:
        """Upload every file under local_dir, then write the manifest last.

        If the key is already committed the existing manifest is returned
        untouched (keys are content keys: same key, same output). A crash before
        the manifest write leaves no entry, only garbage that gc removes.
        """
        check_key(key)
        local = Path(local_dir)
        if not local.is_dir():
            raise ValueError(f"commit {key}: {local} is not a directory")
        # Fail on unserializable meta before uploading anything.
        meta = json.loads(json.dumps(dict(meta), allow_nan=False))
        if not _is_number(compute_s) or compute_s < 0:
            raise ValueError(f"compute_s must be a finite number >= 0, got {compute_s!r}")
        sources = _local_files(local)
        with self._io(f"commit {key}"):
            existing = self.manifest(key)
            if existing is not None:
                return existing
            self._backend.start_entry(self._files_dir(key))
            records = []
            for name, src in sources:
                size, digest = self._upload(src, self._file_path(key, name))
                records.append(FileRecord(name=name, size=size, sha256=digest))
            m = Manifest(
                key=key,
                stage=stage,
                files=records,
                meta=meta,
                compute_s=float(compute_s),
                created=time.time(),
                format=MANIFEST_FORMAT,
            )
            existing = self.manifest(key)  # someone else may have committed meanwhile
            if existing is not None:
                return existing
            self._put(self._manifest_path(key), m.to_json().encode())
        return m

    def fetch(self, key: str, dest: str | os.PathLike | None = None, verify: bool = True) -> Path:
        """A local directory holding the entry's files.

        Local store, no dest: the store's own files directory (no copy; treat it
        as read-only). Otherwise the files are downloaded into dest, or into a
        per-key directory under ``cache_dir`` that is reused while the manifest
        is unchanged. ``verify`` checks size and sha256 of every file
        (CorruptEntryError on mismatch or missing file); copies in cache_dir are
        always verified when downloaded.
        """
        m = self._require(key)
        with self._io(f"fetch {key}"):
            if dest is not None:
                target = Path(dest)
                self._download(m, target, verify)
                return target
            files_dir = self._backend.in_place(self._files_dir(key))
            if files_dir is None:
                return self._fetch_cached(m)
            if verify:
                for rec in m.files:
                    if reason := self._file_problem(key, rec):
                        raise self._corrupt(key, rec.name, reason)
            files_dir.mkdir(parents=True, exist_ok=True)
            return files_dir

    def _file_problem(self, key: str, rec: FileRecord) -> str | None:
        """Re-hash one stored file; why it doesn't match its record, or None."""
        try:
            size, digest = self._stream(self._file_path(key, rec.name))
        except FileNotFoundError:
            return "missing"
        return _mismatch(rec, size, digest)

    def _download(self, m: Manifest, target: Path, verify: bool) -> None:
        target.mkdir(parents=True, exist_ok=True)
        for rec in m.files:
            out_path = target.joinpath(*rec.name.split("/"))
            out_path.parent.mkdir(parents=True, exist_ok=True)
            try:
                with open(out_path, "wb") as out:
                    size, digest = self._stream(self._file_path(m.key, rec.name), out)
            except FileNotFoundError:
                raise self._corrupt(m.key, rec.name, "missing") from None
            if verify:
                self._check_record(m.key, rec, size, digest)

    def _fetch_cached(self, m: Manifest) -> Path:
        """Download into cache_dir/<key> atomically (local rename), or reuse it.

        Downloads are always verified (the hash is computed while streaming
        anyway), so a reused copy is a verified one; reuse checks sizes only.
        """
        final = self.cache_dir / m.key
        if _holds_copy_of(final, m):
            return final / "files"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{m.key}.", dir=self.cache_dir))
        try:
            self._download(m, tmp / "files", verify=True)
            (tmp / MANIFEST).write_text(m.to_json())
            if _holds_copy_of(final, m):  # a concurrent fetch finished first: others may be
                return final / "files"  # reading its files, so keep it and drop ours
            if final.exists():  # stale copy of an older entry under this key
                stale = Path(tempfile.mkdtemp(prefix=f".{m.key}.stale.", dir=self.cache_dir))
                os.replace(final, stale / "old")
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.replace(tmp, final)
            except OSError:  # another process got there first with the same files
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return final / "files"

    def read_bytes(self, key: str, name: str) -> bytes:
        """One file of an entry, verified against the manifest."""
        m = self._require(key)
        rec = next((r for r in m.files if r.name == name), None)
        if rec is None:
            raise EntryNotFoundError(
                self._redact(f"no file {name!r} in entry {key} in store {self.url}")
            )
        with self._io(f"read {key}/{name}"):
            try:
                data = self.fs.cat_file(self._file_path(key, rec.name))
            except FileNotFoundError:
                raise self._corrupt(key, rec.name, "missing") from None
        self._check_record(key, rec, len(data), hashlib.sha256(data).hexdigest())
        return data

    def delete(self, key: str) -> None:
        """Remove an entry: manifest first (it stops existing at once), then files, record."""
        check_key(key)
        with self._io(f"delete {key}"):
            self._rm(self._manifest_path(key))
            self._rm(self._entry_dir(key), recursive=True)
            self._rm(self._record_path(key))

    # ------------------------------------------------------------------ result records

    def _record_path(self, key: str) -> str:
        return self._p("prefect", check_key(key))

    def read_record(self, key: str) -> bytes | None:
        """The raw result record beside an entry, None if absent (bytes: never deserialized)."""
        with self._io(f"read record {key}"):
            try:
                return self.fs.cat_file(self._record_path(key))
            except FileNotFoundError:
                return None

    def write_record(self, key: str, data: bytes) -> None:
        """Write the result record of a committed entry, whole, in one put."""
        with self._io(f"write record {key}"):
            self._put(self._record_path(key), data)

    # ------------------------------------------------------------------ listing (not hot paths)

    def _scan(self) -> dict[str, dict[str, Any]]:
        """Everything under objects/: {key: {"files": {path: info}, "manifest": bool}}."""
        base = self._p("objects")
        try:
            infos = self.fs.find(base, detail=True, withdirs=True)
        except FileNotFoundError:
            return {}
        out: dict[str, dict[str, Any]] = {}
        for path, info in infos.items():
            rel = path[len(base) :].strip("/")
            if not rel:
                continue
            key, _, rest = rel.partition("/")
            slot = out.setdefault(key, {"files": {}, "manifest": False})
            slot["files"][path] = info
            if rest == MANIFEST and info.get("type") != "directory":
                slot["manifest"] = True
        return out

    def _read_manifests(self, keys: list[str]) -> tuple[dict[str, Manifest], dict[str, str]]:
        """Manifests for keys, fetched concurrently -> (good ones, {key: why corrupt})."""
        if not keys:
            return {}, {}
        paths = [self._manifest_path(k) for k in keys]
        blobs = self.fs.cat(paths, on_error="return")
        good, corrupt = {}, {}
        for k, p in zip(keys, paths, strict=True):
            blob = blobs.get(p)
            if isinstance(blob, bytes):
                try:
                    good[k] = Manifest.from_json(blob, key=k)
                except CorruptEntryError as e:
                    corrupt[k] = str(e)
        return good, corrupt

    def _records(self) -> dict[str, dict]:
        """Every object under prefect/ by name (records, and failure records of old versions)."""
        try:
            infos = self.fs.ls(self._p("prefect"), detail=True)
        except FileNotFoundError:
            return {}
        return {i["name"].rstrip("/").rsplit("/", 1)[-1]: i for i in infos}

    def _record_problems(self, names: list[str]) -> dict[str, str]:
        """{key: why its record is damaged} for the records of these keys."""
        if not names:
            return {}
        paths = [self._record_path(k) for k in names]
        blobs = self.fs.cat(paths, on_error="return")
        out = {}
        for k, p in zip(names, paths, strict=True):
            blob = blobs.get(p)
            if not isinstance(blob, bytes):
                continue  # deleted meanwhile
            try:
                check_record(blob, k)
            except DamagedRecordError as e:
                out[k] = str(e)
        return out

    def list_docs(self, folder: str) -> list[str]:
        """Names of the JSON docs directly under a doc folder (lists: not for hot paths)."""
        base = self._p(_check_doc_name(folder).rstrip("/"))
        with self._io(f"list {folder}"):
            try:
                names = self.fs.ls(base, detail=False)
            except FileNotFoundError:
                return []
        out = []
        for n in names:
            name = f"{folder.rstrip('/')}/{n.rstrip('/').rsplit('/', 1)[-1]}"
            if _DOC_NAME_RE.fullmatch(name) and name.endswith(".json"):
                out.append(name)
        return sorted(out)

    def leased_keys(self, now: float | None = None) -> set[str]:
        """Keys that a live run holds a lease on (see cache.leases)."""
        docs = []
        for name in self.list_docs(LEASES):
            try:
                docs.append(self.get_json(name))
            except StoreError:
                continue  # a damaged lease protects nothing
        return live_keys(docs, now)

    def ls(self) -> list[Manifest]:
        """Committed entries, newest first (lists the store: not for hot paths)."""
        with self._io("ls"):
            try:
                names = self.fs.ls(self._p("objects"), detail=False)
            except FileNotFoundError:
                return []
            keys = [n.rstrip("/").rsplit("/", 1)[-1] for n in names]
            manifests, _ = self._read_manifests([k for k in keys if is_key(k)])
        return sorted(manifests.values(), key=lambda m: m.created, reverse=True)

    def verify(self, key: str) -> list[str]:
        """Human-readable problems with an entry (empty list = ok); never raises for corruption."""
        check_key(key)
        with self._io(f"verify {key}"):
            try:
                m = self.manifest(key)
            except CorruptEntryError as e:
                return [f"manifest unreadable: {e}"]
            if m is None:
                if self.fs.exists(self._entry_dir(key)):
                    return [GARBAGE]
                return [f"no entry {key}"]
            problems = []
            for rec in m.files:
                if reason := self._file_problem(key, rec):
                    problems.append(f"{rec.name}: {reason}")
            files_dir = self._files_dir(key)
            try:
                present = self.fs.find(files_dir)
            except FileNotFoundError:
                present = []
            known = {r.name for r in m.files}
            for path in sorted(present):
                name = path[len(files_dir) :].strip("/")
                if name not in known:
                    problems.append(f"{name}: not in the manifest")
        return problems

    def verify_all(self) -> dict[str, list[str]]:
        """Problems for every name under objects/ and prefect/ (empty list = a sound entry).

        Only GARBAGE (files of a commit that never finished) and UNFINISHED (a
        record write cut short) are normal leftovers of a killed run; everything
        else reported here is damage.
        """
        with self._io("verify_all"):
            scan = self._scan()
            records = self._records()
            committed = [k for k in records if is_key(k) and scan.get(k, {}).get("manifest")]
            damaged_records = self._record_problems(committed)
        report: dict[str, list[str]] = {}
        for key, slot in sorted(scan.items()):
            if not is_key(key):
                report[key] = ["not a content key under objects/"]
            elif not slot["manifest"]:
                report[key] = [GARBAGE]
            else:
                report[key] = self.verify(key)
        for name in sorted(records):
            if _is_temp(name):
                report.setdefault(name, []).append(UNFINISHED)
            elif not is_key(name):
                report.setdefault(name, []).append("not a result record of an entry under prefect/")
            elif not scan.get(name, {}).get("manifest"):
                report.setdefault(name, []).append(ORPHAN_RECORD)
            elif name in damaged_records:
                report[name].append(damaged_records[name])
        return report

    # ------------------------------------------------------------------ gc

    def gc(
        self,
        *,
        max_bytes: int | None = None,
        older_than_s: float | None = None,
        grace_s: float = 3600,
        dry_run: bool = False,
    ) -> GcReport:
        """Remove garbage and damage, then, optionally, old entries; never a leased one.

        1. uncommitted dirs (no manifest) whose newest file is older than
           grace_s, so an in-flight commit is left alone;
        2. entries whose manifest is corrupt (a run would recompute them anyway), and
           files in a committed entry that its manifest does not list;
        3. result records that are damaged, or have no entry, or are not records
           of an entry (failure records of old versions), the last two after grace_s;
        4. with older_than_s, entries created before now - older_than_s;
        5. with max_bytes, oldest entries until the committed total fits.
        Entries that a live run has leased (cache.leases) are never removed, and
        leases are read again right before each removal.
        """
        report = GcReport(dry_run=dry_run)
        with self._io("gc"):
            scan = self._scan()
            self._gc_uncommitted(scan, grace_s, report)
            committed = sorted(k for k, s in scan.items() if is_key(k) and s["manifest"])
            entries, corrupt = self._read_manifests(committed)
            self._gc_corrupt_manifests(sorted(corrupt), scan, report)
            self._gc_strays(entries, scan, report)
            self._gc_records(set(entries), grace_s, report)
            self._gc_expired(entries, scan, older_than_s, max_bytes, report)
        return report

    def _gc_uncommitted(self, scan: dict[str, dict[str, Any]], grace_s: float,
                        report: GcReport) -> None:
        """Files of commits that never wrote a manifest (killed), once grace_s says none is
        still in flight."""
        now = time.time()
        for key, slot in sorted(scan.items()):
            if not is_key(key) or slot["manifest"]:
                continue
            times = [t for t in map(mtime_of, slot["files"].values()) if t is not None]
            if times and max(times) > now - grace_s:
                continue  # maybe a commit in flight
            if self.has(key):  # committed since the scan
                continue
            report.removed_garbage.append(key)
            report.freed_bytes += _size_of(slot["files"])
            if not report.dry_run:
                self._rm(self._entry_dir(key), recursive=True)

    def _gc_corrupt_manifests(self, keys: list[str], scan: dict[str, dict[str, Any]],
                              report: GcReport) -> None:
        """Entries whose manifest can't be trusted: every run would recompute them anyway."""
        self._remove_entries(keys, scan, report)

    def _gc_strays(self, entries: dict[str, Manifest], scan: dict[str, dict[str, Any]],
                   report: GcReport) -> None:
        """Files inside a committed entry that its manifest does not list (none are ever
        added after the manifest: a commit uploads every file first)."""
        for key, m in sorted(entries.items()):
            files_dir = self._files_dir(key)
            known = {self._file_path(key, r.name) for r in m.files}
            for path, info in sorted(scan[key]["files"].items()):
                if (info.get("type") == "directory" or not path.startswith(files_dir + "/")
                        or path in known):
                    continue
                report.removed_strays.append(path[len(self._p("objects")) + 1:])
                report.freed_bytes += int(info.get("size") or 0)
                if not report.dry_run:
                    self._rm(path)

    def _gc_records(self, committed: set[str], grace_s: float, report: GcReport) -> None:
        """Result records Prefect must not meet: damaged ones at once; orphans, failure
        records and unfinished writes once grace_s says no commit is writing them."""
        now = time.time()
        records = self._records()
        damaged = self._record_problems(sorted(k for k in records if k in committed))
        for name, info in sorted(records.items()):
            if name in committed and name not in damaged:
                continue
            t = mtime_of(info)
            if name not in damaged and t is not None and t > now - grace_s:
                continue
            if name not in damaged and is_key(name) and self.has(name):
                continue  # committed since the scan
            report.removed_records.append(name)
            report.freed_bytes += int(info.get("size") or 0)
            if not report.dry_run:
                self._rm(self._p("prefect", name))

    def _gc_expired(self, entries: dict[str, Manifest], scan: dict[str, dict[str, Any]],
                    older_than_s: float | None, max_bytes: int | None,
                    report: GcReport) -> None:
        """Entries past the age or size bounds the caller set, oldest first, to free space."""
        oldest_first = sorted(entries.values(), key=lambda m: m.created)
        doomed, spared = _expired(oldest_first, older_than_s, max_bytes, self.leased_keys())
        report.kept_leased += [m.key for m in spared]
        self._remove_entries([m.key for m in doomed], scan, report)

    def _remove_entries(self, keys: list[str], scan: dict[str, dict[str, Any]],
                        report: GcReport) -> None:
        """Delete whole entries, except those leased now (a run may have started since)."""
        if not keys:
            return
        leased = self.leased_keys()
        for key in keys:
            if key in leased:
                report.kept_leased.append(key)
                continue
            report.removed_entries.append(key)
            report.freed_bytes += _size_of(scan[key]["files"])
            if not report.dry_run:
                self.delete(key)

    # ------------------------------------------------------------------ URIs and JSON docs

    def entry_uri(self, key: str) -> str:
        """URL of an entry's folder (objects/<key>), for display and StageOutput.uri."""
        return self.fs.unstrip_protocol(self._entry_dir(key))

    def put_json(self, name: str, obj: Any) -> None:
        """Write a small JSON document at <root>/<name>, whole, in one put."""
        path = self._p(_check_doc_name(name))
        data = json.dumps(obj, allow_nan=False, indent=1).encode()
        with self._io(f"put_json {name}"):
            self._put(path, data)

    def get_json(self, name: str) -> Any | None:
        """The JSON document at <root>/<name>, or None if absent."""
        path = self._p(_check_doc_name(name))
        with self._io(f"get_json {name}"):
            try:
                data = self.fs.cat_file(path)
            except FileNotFoundError:
                return None
        try:
            return json.loads(data)
        except (ValueError, UnicodeDecodeError) as e:
            raise StoreError(
                self._redact(f"corrupt JSON document {name} in store {self.url}: {e}")
            ) from None

    def delete_doc(self, name: str) -> None:
        """Remove the JSON document at <root>/<name> (absent is fine)."""
        path = self._p(_check_doc_name(name))
        with self._io(f"delete {name}"):
            self._rm(path)
