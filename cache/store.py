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

Concurrent commits of the *same* key must be serialized by the caller (the
Prefect lock manager does); the store re-checks for a manifest right before
writing its own to keep the window small.
"""

from __future__ import annotations

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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import fsspec
from fsspec.core import url_to_fs
from fsspec.implementations.local import LocalFileSystem

from cache.errors import CorruptEntryError, EntryNotFoundError, StoreError
from cache.keys import check_key, is_key, redact
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
_SECRET_OPTION_RE = re.compile(r"(?i)secret|password|token|key")
# Probe settings for open(): an unreachable S3 endpoint must fail in seconds,
# not after botocore's default 60 s connect timeout and 5 retries.
_PROBE_CONFIG = {"connect_timeout": 3, "read_timeout": 5}
# Every other S3 call: an outage (server paused or gone) must end an operation
# within S3_BOUND_S, not hang on botocore's and s3fs's default retry loops.
# Worst case: S3_ATTEMPTS x (connect or read timeout) plus s3fs's short backoff.
S3_CONFIG = {"connect_timeout": 5, "read_timeout": 15, "retries": {"total_max_attempts": 1}}
S3_ATTEMPTS = 3
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


@dataclass(frozen=True)
class FileRecord:
    """One committed file: its path inside the entry, size and sha256."""

    name: str
    size: int
    sha256: str


@dataclass
class Manifest:
    """What a committed entry holds; written last, so its presence means "complete"."""

    key: str
    stage: str
    files: list[FileRecord]
    meta: dict
    compute_s: float
    created: float
    format: int = MANIFEST_FORMAT

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def to_json(self) -> str:
        doc = asdict(self)
        return json.dumps(doc, sort_keys=True, indent=1, allow_nan=False, ensure_ascii=True)

    @classmethod
    def from_json(
        cls, text: str | bytes, *, key: str | None = None, source: str = MANIFEST
    ) -> Manifest:
        """Parse and validate a manifest; anything off raises CorruptEntryError.

        Strict on purpose: a manifest is the commit record, and a malformed one
        (or one whose file names try to escape the entry) must not be trusted.
        """

        def bad(reason: str) -> CorruptEntryError:
            return CorruptEntryError(f"corrupt manifest {source}: {reason}", key=key, file=MANIFEST)

        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as e:
            raise bad(f"not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise bad("not a JSON object")
        fields = {"key", "stage", "files", "meta", "compute_s", "created", "format"}
        if set(doc) != fields:
            raise bad(f"fields {sorted(doc)} != {sorted(fields)}")
        if doc["format"] != MANIFEST_FORMAT or isinstance(doc["format"], bool):
            raise bad(f"unsupported format {doc['format']!r}")
        if not is_key(doc["key"]):
            raise bad("key is not a content key")
        if key is not None and doc["key"] != key:
            raise bad(f"manifest is for key {doc['key']}")
        if not isinstance(doc["stage"], str):
            raise bad("stage is not a string")
        if not isinstance(doc["meta"], dict):
            raise bad("meta is not an object")
        if not _is_number(doc["compute_s"]) or not _is_number(doc["created"]):
            raise bad("compute_s/created are not finite numbers")
        if not isinstance(doc["files"], list):
            raise bad("files is not a list")
        files = []
        for rec in doc["files"]:
            if not isinstance(rec, dict) or set(rec) != {"name", "size", "sha256"}:
                raise bad(f"bad file record {rec!r}")
            try:
                name = _check_file_name(rec["name"])
            except ValueError as e:
                raise bad(str(e)) from None
            size, digest = rec["size"], rec["sha256"]
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise bad(f"bad size for {name}")
            if not is_key(digest):  # same shape: 64 lowercase hex
                raise bad(f"bad sha256 for {name}")
            files.append(FileRecord(name, size, digest))
        if len({f.name for f in files}) != len(files):
            raise bad("duplicate file names")
        return cls(
            key=doc["key"],
            stage=doc["stage"],
            files=files,
            meta=doc["meta"],
            compute_s=float(doc["compute_s"]),
            created=float(doc["created"]),
            format=doc["format"],
        )


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


def _mtime(info: Mapping[str, Any]) -> float | None:
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


def _copy_hashing(src: BinaryIO, out: BinaryIO | None) -> tuple[int, str]:
    """Stream src (to out, if given) in chunks -> (size, sha256 hex)."""
    h, size = hashlib.sha256(), 0
    while chunk := src.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        if out is not None:
            out.write(chunk)
    return size, h.hexdigest()


def _mismatch(rec: FileRecord, size: int, digest: str) -> str | None:
    """Why a file's bytes don't match its record, or None."""
    if size != rec.size:
        return f"size {size} != {rec.size} in the manifest"
    if digest != rec.sha256:
        return "sha256 differs from the manifest"
    return None


def _secret_values(options: Mapping[str, Any]) -> list[str]:
    """Literal credential strings in storage_options, to scrub from messages."""
    out: list[str] = []
    for k, v in options.items():
        if isinstance(v, Mapping):
            out += _secret_values(v)
        elif isinstance(v, str) and _SECRET_OPTION_RE.search(str(k)):
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
        shown = redact(url, self._secrets)
        protocol = url.split("://", 1)[0].lower() if "://" in url else "file"
        if not url.strip() or url.strip() != url:
            raise StoreError(f"store URL {url!r}: empty or surrounded by spaces")
        if protocol not in SUPPORTED_PROTOCOLS:
            raise StoreError(f"store URL {shown}: unsupported protocol {protocol!r} "
                             f"(use a local path, file://, s3:// or memory://)")
        if "://" in url and not url.split("://", 1)[1].strip("/"):
            raise StoreError(f"store URL {shown}: no bucket or directory after {protocol}://")
        try:
            cls = fsspec.get_filesystem_class(protocol)
            if issubclass(cls, LocalFileSystem):
                options.setdefault("auto_mkdir", True)
            elif protocol != "memory":
                # s3fs caches listings; a stale cache would make has() lie after
                # another process commits or deletes.
                options.setdefault("use_listings_cache", False)
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
            self.fs, root = url_to_fs(url, **options)
        except (ImportError, ValueError, TypeError, OSError) as e:
            raise StoreError(self._redact(f"cannot open store {shown}: {e}")) from None
        self._options = options
        self.storage_options: dict = dict(storage_options or {})  # as given, for other fsspec users
        self.root: str = root.rstrip("/") or root
        self.url: str = self.fs.unstrip_protocol(self.root)
        self._local = isinstance(self.fs, LocalFileSystem)
        protocols = (self.fs.protocol,) if isinstance(self.fs.protocol, str) else self.fs.protocol
        self._s3 = "s3" in protocols
        if self._s3:
            self.fs.retries = S3_ATTEMPTS  # s3fs's own loop over timeouts and disconnects
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
        """Write one object whole: atomic rename on local disk, one PUT elsewhere."""
        if self._local:
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
        else:
            self.fs.pipe_file(path, data)
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
            return _copy_hashing(f, out)

    def _upload(self, src: Path, dst: str) -> tuple[int, str]:
        """Copy one local file into the store, hashing the bytes actually sent."""
        with open(src, "rb") as f, self.fs.open(dst, "wb") as out:
            return _copy_hashing(f, out)

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
            store._probe(create)
        except StoreError:
            raise
        except Exception as e:  # any failure to reach the store is reported the same way
            msg = f"cannot reach store {store.url}: {type(e).__name__}: {e}"
            raise StoreError(store._redact(msg)) from None
        return store

    def _probe(self, create: bool) -> None:
        if self._local:
            if create:
                os.makedirs(self.root, exist_ok=True)
            if not os.path.isdir(self.root):
                raise NotADirectoryError(f"{self.root} is not a directory")
        elif self._s3:
            options = dict(self._options)
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
        elif create:
            self.fs.makedirs(self.root, exist_ok=True)
        elif not self.fs.isdir(self.root):
            raise FileNotFoundError(f"{self.root} does not exist")

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
            if self._local:  # an empty entry still fetches as a directory
                os.makedirs(self._p("objects", key, "files"), exist_ok=True)
            records = []
            for name, src in sources:
                size, digest = self._upload(src, self._file_path(key, name))
                records.append(FileRecord(name, size, digest))
            m = Manifest(
                key=key,
                stage=stage,
                files=records,
                meta=meta,
                compute_s=float(compute_s),
                created=time.time(),
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
            if self._local:
                files_dir = Path(self._p("objects", key, "files"))
                if verify:
                    for rec in m.files:
                        if reason := self._file_problem(key, rec):
                            raise self._corrupt(key, rec.name, reason)
                files_dir.mkdir(parents=True, exist_ok=True)
                return files_dir
            return self._fetch_cached(m)

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
        try:
            cached = Manifest.from_json((final / MANIFEST).read_bytes(), key=m.key)
        except (OSError, CorruptEntryError):
            cached = None
        if cached == m and all(
            (final / "files" / r.name).is_file()
            and (final / "files" / r.name).stat().st_size == r.size
            for r in m.files
        ):
            return final / "files"
        self.cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{m.key}.", dir=self.cache_dir))
        try:
            self._download(m, tmp / "files", verify=True)
            (tmp / MANIFEST).write_text(m.to_json())
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

    def delete_record(self, key: str) -> None:
        with self._io(f"delete record {key}"):
            self._rm(self._record_path(key))

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
            files_dir = self._p("objects", key, "files")
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
            self._gc_garbage(scan, grace_s, report)
            committed = sorted(k for k, s in scan.items() if is_key(k) and s["manifest"])
            entries, corrupt = self._read_manifests(committed)
            self._gc_entries(sorted(corrupt), scan, report)
            self._gc_strays(entries, scan, report)
            self._gc_records(set(entries), grace_s, report)
            doomed, spared = _expired(sorted(entries.values(), key=lambda m: m.created),
                                      older_than_s, max_bytes, self.leased_keys())
            report.kept_leased += [m.key for m in spared]
            self._gc_entries([m.key for m in doomed], scan, report)
        return report

    def _gc_garbage(self, scan: dict[str, dict[str, Any]], grace_s: float,
                    report: GcReport) -> None:
        now = time.time()
        for key, slot in sorted(scan.items()):
            if not is_key(key) or slot["manifest"]:
                continue
            times = [t for t in map(_mtime, slot["files"].values()) if t is not None]
            if times and max(times) > now - grace_s:
                continue  # maybe a commit in flight
            if self.has(key):  # committed since the scan
                continue
            report.removed_garbage.append(key)
            report.freed_bytes += _size_of(slot["files"])
            if not report.dry_run:
                self._rm(self._entry_dir(key), recursive=True)

    def _gc_strays(self, entries: dict[str, Manifest], scan: dict[str, dict[str, Any]],
                   report: GcReport) -> None:
        """Files inside a committed entry that its manifest does not list (none are ever
        added after the manifest: a commit uploads every file first)."""
        for key, m in sorted(entries.items()):
            files_dir = self._p("objects", key, "files")
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
        now = time.time()
        records = self._records()
        damaged = self._record_problems(sorted(k for k in records if k in committed))
        for name, info in sorted(records.items()):
            if name in committed and name not in damaged:
                continue
            t = _mtime(info)
            if name not in damaged and t is not None and t > now - grace_s:
                continue
            if name not in damaged and is_key(name) and self.has(name):
                continue  # committed since the scan
            report.removed_records.append(name)
            report.freed_bytes += int(info.get("size") or 0)
            if not report.dry_run:
                self._rm(self._p("prefect", name))

    def _gc_entries(self, keys: list[str], scan: dict[str, dict[str, Any]],
                    report: GcReport) -> None:
        if not keys:
            return
        leased = self.leased_keys()  # again: a run may have started since
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

    def record_uri(self, key: str) -> str:
        """URL of Prefect's result record for key (deleted with the entry, gc'd if orphaned)."""
        return self.fs.unstrip_protocol(self._record_path(key))

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
