"""Stage 1, data_prep: load, synthesize the real/fake task, tokenize, split.

Sources: a Hugging Face `datasets` hub name; local/remote files through fsspec,
read here with one reader per format (csv/tsv with any one-character delimiter
by pyarrow, json lines / a JSON array or columns by the json module, parquet by
pyarrow), the same readers `check_split` uses before a run to refuse a file
that cannot be read as configured; `builtin` is the generated offline default.
Outputs (all plain files, no pickles): tokenizer/, target_train.parquet,
target_validation.parquet, guidance.parquet (held-out slice of the target
train split for the in-stage lookahead mode), intermediate_train.parquet when
the intermediate task is on, and info.json (label set with counts per split,
the max_length used, vocabulary, what the intermediate task was built from).
"""

from __future__ import annotations

import io
import json
import math
import os
import random
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from stages import builtin_world
from stages.base import StageContext, StageResult
from stages.params import (
    FILE_FORMATS,
    MAX_LENGTH_AUTO,
    DataPrepParams,
    DataSource,
    IntermediateData,
)

# ---------------------------------------------------------------- reading files

PEEK_BYTES = 8192  # what check_split reads of a file: its head (and tail, for labels)
SCAN_LIMIT = 64 * 2**20  # a one-class label check reads whole files only up to this much
MAX_CHECKED_FILES = 32  # of a glob, the first files are checked before a run
SEPARATORS = {",": "comma", "\t": "tab", ";": "semicolon", "|": "pipe"}
_COMPRESSION = (".gz", ".bz2", ".xz", ".zst", ".lz4")


class DataFileError(ValueError):
    """A data file that cannot be read as configured; the message names the file."""

    def __init__(self, uri: str, problem: str) -> None:
        self.uri, self.problem = uri, problem
        super().__init__(f"{_shown(uri)}: {problem}")


def _shown(uri: str) -> str:
    return re.sub(r"(://)[^/@\s]+@", r"\1***@", uri)


def _plain_name(uri: str) -> str:
    """The file name, lowercased, without a compression suffix."""
    name = uri.rstrip("/").rsplit("/", 1)[-1].lower()
    return next((name[: -len(s)] for s in _COMPRESSION if name.endswith(s)), name)


def delimiter_for(src: DataSource, uri: str) -> str:
    """The delimiter a csv/tsv file is read with: `delimiter`, else tab for source tsv and
    *.tsv / *.tab files, else comma. (A name is not in the data fingerprint, only content;
    the same bytes read with another delimiter lack the configured columns and are refused.)"""
    if src.delimiter is not None:
        return src.delimiter
    return "\t" if src.source == "tsv" or _plain_name(uri).endswith((".tsv", ".tab")) else ","


def _describe(fmt: str, delimiter: str) -> str:
    return f"{SEPARATORS.get(delimiter, repr(delimiter))}-separated csv" if fmt == "csv" else fmt


def expand_files(uris: str | Sequence[str]) -> list[str]:
    """Paths or fsspec URLs, globs expanded to their files (sorted)."""
    from fsspec.core import url_to_fs
    from fsspec.implementations.local import LocalFileSystem

    out: list[str] = []
    for uri in [uris] if isinstance(uris, str) else uris:
        uri = uri if "://" in uri else os.path.expanduser(uri)
        if not any(c in uri for c in "*?["):
            out.append(uri)
            continue
        fs, path = url_to_fs(uri)
        found = fs.glob(path, detail=True)
        names = sorted(n for n, i in found.items() if i.get("type") != "directory")
        out += names if isinstance(fs, LocalFileSystem) else [fs.unstrip_protocol(n) for n in names]
    return out


def _open(uri: str):
    import fsspec

    return fsspec.open(uri, "rb", compression="infer")


def _brief(e: BaseException) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# Arrow reads here run in the calling thread (use_threads=False): on Python file objects
# its thread pools can abort or hang the interpreter at exit (apache/arrow#34314, #50482),
# and `memotune plan` exits right after check_split.
def _csv_options(delimiter: str):
    from pyarrow import csv as pacsv

    tab = delimiter == "\t"  # TSV (IANA) has no quoting: a '"' in a sentence is a character
    return pacsv.ParseOptions(delimiter=delimiter, quote_char=False if tab else '"',
                              newlines_in_values=not tab)


def _serial_reads():
    from pyarrow import csv as pacsv

    return pacsv.ReadOptions(use_threads=False)


def _parse_csv(data: bytes, delimiter: str, columns: Sequence[str] | None = None) -> pa.Table:
    """csv bytes (a header line first) as a table of strings; all columns unless named."""
    from pyarrow import csv as pacsv

    if columns is None:
        first = data.split(b"\n", 1)[0] + b"\n"
        columns = pacsv.read_csv(io.BytesIO(first), read_options=_serial_reads(),
                                 parse_options=_csv_options(delimiter)).column_names
    convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                   include_columns=list(columns))
    return pacsv.read_csv(io.BytesIO(data), read_options=_serial_reads(),
                          parse_options=_csv_options(delimiter), convert_options=convert)


def _json_rows(data: bytes, uri: str) -> list[dict]:
    """JSON lines, or one JSON document: an array of objects, or an object of equal-length
    columns. Every record an object."""
    text = data.decode("utf-8-sig")
    stripped = text.lstrip()
    lines = stripped.split("\n", 1)
    if stripped.startswith("{"):
        try:
            first = json.loads(lines[0])
        except ValueError:
            first = None
        if isinstance(first, dict) and not (len(lines) == 1 and _columns(first)):
            rows = []  # JSON lines
            for i, line in enumerate(text.splitlines()):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise DataFileError(uri, f"line {i + 1} is not JSON ({_brief(e)})") from None
                if not isinstance(row, dict):
                    raise DataFileError(uri, f"line {i + 1} is not a JSON object")
                rows.append(row)
            return rows
    doc = json.loads(text)
    if isinstance(doc, list):
        if not all(isinstance(r, dict) for r in doc):
            raise DataFileError(uri, "a JSON array whose items are not all objects")
        return doc
    if isinstance(doc, dict) and _columns(doc):
        return [dict(zip(doc, values, strict=True)) for values in zip(*doc.values(), strict=True)]
    raise DataFileError(uri, "JSON that is neither JSON lines, an array of objects, nor an "
                             "object of equal-length columns")


def _columns(doc: dict) -> bool:
    """A JSON object of equal-length columns ({"text": [...], "label": [...]})."""
    return bool(doc) and all(isinstance(v, list) for v in doc.values()) and \
        len({len(v) for v in doc.values()}) == 1


def _read_file(uri: str, fmt: str, delimiter: str, columns: Sequence[str]) -> list[dict]:
    """Every row of one file (the named columns; json: whole records)."""
    try:
        with _open(uri) as f:
            if fmt == "csv":
                from pyarrow import csv as pacsv

                convert = pacsv.ConvertOptions(column_types={c: pa.string() for c in columns},
                                               include_columns=list(columns))
                return pacsv.read_csv(f, read_options=_serial_reads(), parse_options=_csv_options(delimiter),
                                      convert_options=convert).to_pylist()
            if fmt == "parquet":
                return pq.read_table(f, columns=list(columns), use_threads=False).to_pylist()
            return _json_rows(f.read(), uri)
    except DataFileError:
        raise
    except (pa.ArrowException, OSError, ValueError, EOFError) as e:
        raise DataFileError(uri, f"cannot be read as {_describe(fmt, delimiter)}: {_brief(e)}") from None


def read_split(src: DataSource, split: str, columns: Sequence[str]) -> list[dict]:
    """All rows of one split of a file source, its files in (sorted glob) order."""
    if not src.data_files or split not in src.data_files:
        raise ValueError(f"data_files has no '{split}' split for source {src.source}")
    fmt = FILE_FORMATS[src.source]
    rows: list[dict] = []
    for uri in expand_files(src.data_files[split]):
        rows += _read_file(uri, fmt, delimiter_for(src, uri), columns)
    return rows


# ---------------------------------------------------------------- checking files up front


@dataclass
class _Peek:
    columns: list[str] | None  # None: not known without reading all of it (a big JSON document)
    rows: list[dict]  # the first rows
    whole: bool  # rows are all of the file's rows
    header: str = ""  # csv: the first line
    labels: set[str] | None = None  # parquet: label values from the row group statistics
    error: str | None = None  # csv: the rows could not be parsed (after the header)


def _head(uri: str, size: int = PEEK_BYTES) -> tuple[bytes, bool]:
    """The complete lines within the first `size` bytes (more if the first line is longer,
    up to 1 MB) and whether that is the whole file."""
    with _open(uri) as f:
        data = f.read(size)
        while b"\n" not in data and len(data) < 2**20:
            more = f.read(size)
            if not more:
                return data, True
            data += more
        if not f.read(1):
            return data, True
    cut = data.rfind(b"\n")
    if cut < 0:
        raise DataFileError(uri, "its first line is longer than 1 MB (not a text file of lines?)")
    return data[: cut + 1], False


def _tail(uri: str, size: int = PEEK_BYTES) -> bytes:
    """The complete lines within the last `size` bytes (b"" for a compressed file)."""
    from fsspec.core import url_to_fs

    if _plain_name(uri) != uri.rstrip("/").rsplit("/", 1)[-1].lower():
        return b""
    fs, path = url_to_fs(uri)
    total = fs.size(path)
    with fs.open(path, "rb") as f:
        f.seek(max(0, total - size))
        data = f.read(size)
    return data.split(b"\n", 1)[1] if total > size and b"\n" in data else b""


def _peek(uri: str, fmt: str, delimiter: str, label: str | None) -> _Peek:
    if fmt == "parquet":
        return _peek_parquet(uri, label)
    head, whole = _head(uri)
    if not head.lstrip(b"\xef\xbb\xbf").strip():
        raise DataFileError(uri, "is empty")
    if fmt == "json":
        if not whole and not head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"{"):
            return _peek_json_document(uri)
        try:
            rows = _json_rows(head, uri)
        except (ValueError, UnicodeDecodeError) as e:
            if isinstance(e, DataFileError):
                raise
            if not whole:
                return _peek_json_document(uri)
            raise DataFileError(uri, f"is not JSON ({_brief(e)})") from None
        return _Peek(sorted({k for r in rows[:100] for k in r}), rows, whole)
    header = head.split(b"\n", 1)[0].decode("utf-8-sig", errors="replace").rstrip("\r")
    if not whole and delimiter != "\t":  # cut where no quoted value (RFC 4180) is open
        cut = len(head)
        while cut > 0 and head[:cut].count(b'"') % 2:
            cut = head.rfind(b"\n", 0, cut - 1) + 1
        head = head[:cut] or head.split(b"\n", 1)[0] + b"\n"
    problem = f"cannot be read as {_describe(fmt, delimiter)}"
    try:
        columns = _parse_csv(head.split(b"\n", 1)[0] + b"\n", delimiter).column_names
    except pa.ArrowException as e:
        raise DataFileError(uri, f"{problem}: {_brief(e)}") from None
    try:
        table = _parse_csv(head, delimiter, columns)
    except pa.ArrowException as e:  # a wrong delimiter shows in the header: checked first
        return _Peek(columns, [], False, header, error=f"{problem}: {_brief(e)}")
    return _Peek(table.column_names, table.to_pylist(), whole, header)


def _peek_json_document(uri: str) -> _Peek:
    """A JSON array or object file is parsed whole: up to SCAN_LIMIT, else left to the stage."""
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(uri)
    if _plain_name(uri) != uri.rstrip("/").rsplit("/", 1)[-1].lower() or fs.size(path) > SCAN_LIMIT:
        return _Peek(None, [], False)
    rows = _read_file(uri, "json", ",", ())
    return _Peek(sorted({k for r in rows[:100] for k in r}), rows, True)


def _peek_parquet(uri: str, label: str | None) -> _Peek:
    try:
        with _open(uri) as f:
            f.seek(0, 2)
            if f.tell() == 0:
                raise DataFileError(uri, "is empty")
            f.seek(0)
            pf = pq.ParquetFile(f)
            names = pf.schema_arrow.names
            n = pf.metadata.num_rows
            batch = next(pf.iter_batches(batch_size=64, use_threads=False), None) if n else None
            labels = _parquet_label_stats(pf, label) if label in names else None
    except DataFileError:
        raise
    except (pa.ArrowException, OSError, ValueError) as e:
        raise DataFileError(uri, f"cannot be read as parquet: {_brief(e)}") from None
    rows = batch.to_pylist() if batch is not None else []
    return _Peek(names, rows, len(rows) >= n, labels=labels)


def _parquet_label_stats(pf: Any, label: str) -> set[str] | None:
    """The label values the row groups' min/max statistics show (None: no statistics)."""
    idx = pf.schema_arrow.names.index(label)
    values: set[str] = set()
    for g in range(pf.metadata.num_row_groups):
        col = pf.metadata.row_group(g).column(idx)
        stats = col.statistics
        if stats is None or not stats.has_min_max:
            return None
        values |= {_label_text(stats.min), _label_text(stats.max)}
    return values


def _label_text(v: Any) -> str:
    if isinstance(v, bytes):
        v = v.decode("utf-8", errors="replace")
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    return str(v).strip()


def _delimiter_hint(header: str, delimiter: str, needed: Sequence[str], columns: list[str]) -> str | None:
    """Another common separator under which the header has the needed columns, or the one a
    single-column header is full of."""
    import csv

    others = [d for d in SEPARATORS if d != delimiter]
    for d in others:
        names = next(csv.reader([header], delimiter=d), [])
        if all(c in [n.strip() for n in names] for c in needed):
            return d
    if len(columns) == 1:
        found = [d for d in others if d in columns[0]]
        if found:
            return max(found, key=columns[0].count)
    return None


def _missing_columns(peek: _Peek, needed: Sequence[str], fmt: str, delimiter: str,
                     where: str) -> str | None:
    missing = [c for c in needed if c not in (peek.columns or [])]
    if peek.columns is None or not missing:
        return None
    shown = ", ".join(repr(c) for c in peek.columns[:12]) + (", ..." if len(peek.columns) > 12 else "")
    hint = _delimiter_hint(peek.header, delimiter, needed, peek.columns) if fmt == "csv" else None
    if hint is not None:
        setting = "tab (or source: tsv)" if hint == "\t" else repr(hint)
        got = (f"one column {shown}" if len(peek.columns) == 1
               else f"no column {', '.join(repr(c) for c in missing)} (columns: {shown})")
        return (f"has {got} when split on {SEPARATORS.get(delimiter, repr(delimiter))}s: it looks "
                f"{SEPARATORS[hint]}-separated; set {where}.delimiter: {setting}")
    what = "column" if fmt != "json" else "field"
    return f"has no {what} {', '.join(repr(c) for c in missing)} ({what}s: {shown})"


def check_split(src: DataSource, split: str, columns: Sequence[str], label: str | None = None,
                where: str = "data_prep.target") -> None:
    """Refuse, before anything runs, a split of a file source that cannot be read as configured.

    Each file (the first MAX_CHECKED_FILES of a glob) is opened with the stage's own reader
    and its head (PEEK_BYTES: header and first rows) read: an empty file, one the reader
    refuses, one without the `columns` (with the delimiter to set when another common
    separator would give them) or without rows is refused. With `label`, a label column with
    one class is refused: its values come from the head and tail of each file (parquet: the
    row group statistics), and only when those show one class are the files read whole (up
    to SCAN_LIMIT bytes, else that check is left to the stage). `where` is the config path
    of the source, for the hint. Raises DataFileError naming the file.
    """
    if not src.data_files or split not in src.data_files:
        raise ValueError(f"data_files has no '{split}' split for source {src.source}")
    fmt = FILE_FORMATS[src.source]
    uris = expand_files(src.data_files[split])
    if not uris:
        raise DataFileError(str(src.data_files[split]), "matches no file")
    needed = list(dict.fromkeys([*columns, *([label] if label else [])]))
    seen: set[str] = set()
    complete = len(uris) <= MAX_CHECKED_FILES
    for uri in uris[:MAX_CHECKED_FILES]:
        delimiter = delimiter_for(src, uri)
        try:
            peek = _peek(uri, fmt, delimiter, label)
        except DataFileError:
            raise
        except (pa.ArrowException, OSError, ValueError, EOFError) as e:
            raise DataFileError(uri, f"cannot be read as {_describe(fmt, delimiter)}: "
                                     f"{_brief(e)}") from None
        empty = peek.whole and not peek.rows
        problem = None if empty and not peek.columns else \
            _missing_columns(peek, needed, fmt, delimiter, where) or peek.error
        if problem:
            raise DataFileError(uri, problem)
        if empty:
            raise DataFileError(uri, {"csv": "has a header but no rows", "json": "has no records",
                                      "parquet": "has no rows"}[fmt])
        if label is None:
            continue
        if peek.labels is not None:
            seen |= peek.labels
            continue
        rows = peek.rows
        if not peek.whole and fmt in ("csv", "json") and peek.columns is not None:
            rows = rows + _tail_rows(uri, fmt, delimiter, peek.header)
            complete = False
        elif not peek.whole:
            complete = False
        seen |= {_label_text(r.get(label)) for r in rows if r.get(label) is not None}
    seen.discard("")
    if label is None or len(seen) >= 2:
        return
    if not complete:
        seen = _scan_labels(src, fmt, uris, label)
        if seen is None:
            return  # too big to read here: the stage checks it
    if len(seen) < 2:
        what = f"one class ({', '.join(sorted(seen))})" if seen else "no values"
        name = uris[0] if len(uris) == 1 else str(src.data_files[split])
        raise DataFileError(name, f"label column {label!r} has {what}; a classifier needs at "
                                  f"least two")


def _tail_rows(uri: str, fmt: str, delimiter: str, header: str) -> list[dict]:
    """The last rows (best effort: [] when the cut cannot be parsed)."""
    try:
        tail = _tail(uri)
        if not tail.strip():
            return []
        if fmt == "json":
            return _json_rows(tail, uri)
        return _parse_csv(header.encode() + b"\n" + tail, delimiter).to_pylist()
    except (pa.ArrowException, OSError, ValueError):
        return []


def _scan_labels(src: DataSource, fmt: str, uris: list[str], label: str) -> set[str] | None:
    """Every label value of the files (stops at two), or None when they exceed SCAN_LIMIT."""
    from fsspec.core import url_to_fs

    total = 0
    for uri in uris:
        fs, path = url_to_fs(uri)
        total += fs.size(path) or 0
    if total > SCAN_LIMIT:
        return None
    seen: set[str] = set()
    for uri in uris:
        rows = _read_file(uri, fmt, delimiter_for(src, uri), [label])
        seen |= {_label_text(r.get(label)) for r in rows if r.get(label) is not None}
        seen.discard("")
        if len(seen) >= 2:
            break
    return seen


# ---------------------------------------------------------------- loading


def _load_split(src: DataSource, split: str, columns: Sequence[str], label: str | None,
                where: str) -> list[dict]:
    """A split's rows: files through check_split and this module's readers, else the hub."""
    if src.source in FILE_FORMATS:
        check_split(src, split, columns, label, where)
        return read_split(src, split, columns)
    import datasets

    ds = datasets.load_dataset(src.source, src.subset, split=split, revision=src.revision)
    return ds.to_list()


def _target_rows(p: DataPrepParams) -> tuple[list[dict], list[dict]]:
    """Every row of the target train and validation splits (sampling comes later)."""
    t = p.target
    if t.source == "builtin":
        b = p.builtin
        train = builtin_world.target_examples(b.n_train, seed=p.seed * 1000 + 1)
        val = builtin_world.target_examples(b.n_validation, seed=p.seed * 1000 + 2)
    else:
        cols = [*t.text_fields, t.label_field]
        train = _load_split(t, t.train_split, cols, t.label_field, "data_prep.target")
        val = _load_split(t, t.validation_split, cols, None, "data_prep.target")
    for name, rows in (("train", train), ("validation", val)):
        if not rows:
            raise ValueError(f"target {name} split has no rows")
        for f in [*t.text_fields, t.label_field]:
            if f not in rows[0]:
                raise ValueError(f"target {name} split has no field '{f}' (fields: {sorted(rows[0])})")
    return train, val


_INT_TEXT = re.compile(r"[+-]?\d+")


def class_labels(splits: Mapping[str, list[dict]], field: str) -> dict[str, list]:
    """Each split's labels as class values: ints when every label of every split is an
    integer (or an integer's text), else text. A missing label or a fractional number is
    an error (classification only)."""
    for split, rows in splits.items():
        for i, r in enumerate(rows):
            v = r.get(field)
            if v is None or (isinstance(v, str) and not v.strip()):
                raise ValueError(f"target {split} split: row {i + 1} has no label ({field!r} is empty)")
            if isinstance(v, float) and not v.is_integer():
                raise ValueError(f"target {split} split: label {v!r} (row {i + 1}) is not a class: "
                                 f"{field!r} must hold classes (integers or text)")
            if not isinstance(v, bool | int | float | str):
                raise ValueError(f"target {split} split: label of row {i + 1} is a "
                                 f"{type(v).__name__}, not a class (integers or text)")
    values = [r[field] for rows in splits.values() for r in rows]
    as_int = all(not isinstance(v, str) or _INT_TEXT.fullmatch(v.strip()) for v in values)
    if as_int:
        return {s: [int(v) if not isinstance(v, str) else int(v.strip()) for v in
                    (r[field] for r in rows)] for s, rows in splits.items()}
    return {s: [v.strip() if isinstance(v, str) else _label_text(v) for v in
                (r[field] for r in rows)] for s, rows in splits.items()}


def sample_indices(labels: Sequence[Any], n: int | None, seed: str, stratify: bool) -> list[int]:
    """Row indices of a seeded random sample of n rows (all rows, in order, when n is None
    or covers them). Stratified: each label gets its proportional share (largest remainders,
    ties in label order); the picked rows are shuffled together."""
    total = len(labels)
    if n is None or n >= total:
        return list(range(total))
    rng = random.Random(seed)
    if not stratify:
        return rng.sample(range(total), n)
    by_label: dict[Any, list[int]] = defaultdict(list)
    for i, v in enumerate(labels):
        by_label[v].append(i)
    order = sorted(by_label)
    exact = {v: n * len(by_label[v]) / total for v in order}
    quota = {v: math.floor(exact[v]) for v in order}
    rest = sorted(order, key=lambda v: -(exact[v] - quota[v]))[: n - sum(quota.values())]
    for v in rest:
        quota[v] += 1
    picked = [i for v in order for i in rng.sample(by_label[v], quota[v])]
    rng.shuffle(picked)
    return picked


GENERATOR_MAX_SENTENCES = 100_000  # the built-in generator is fitted on at most this many
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _intermediate_sentences(p: DataPrepParams, ctx: StageContext) -> tuple[list[str], list[str], dict]:
    """(sentences to fake, sentences to fit the built-in generator on, a report).

    From a corpus (a file or hub source) the two are disjoint: the generator never sees a
    sentence it fakes an ending of. The builtin source fits it on a separately generated
    corpus (an independent draw; its small grammar makes some sentences coincide, kept so
    the offline default's data stay as benchmarked). From a corpus, every sentence is counted: those of >= min_words qualify; fewer than 2 x
    n_examples is a warning, fewer than n_examples lowers min_words (down to
    min(min_words_floor, min_words)) until enough qualify. A seeded sample of the qualifying
    ones (truncated to max_words) is faked; with the built-in generator, at least a fifth of
    all sentences (the short ones first) are kept to fit it on.
    """
    it = p.intermediate
    fits = it.generator == "builtin"
    if it.source == "builtin":
        chosen = builtin_world.corpus(it.n_examples, seed=p.seed * 1000 + 3)
        fit_on = builtin_world.corpus(p.builtin.corpus_size, seed=p.seed * 1000 + 4) if fits else []
        return chosen, fit_on, {"source": "builtin", "selected": len(chosen),
                                "generator_sentences": len(fit_on)}
    rows = _load_split(it, it.split, [it.text_field], None, "data_prep.intermediate")
    if rows and it.text_field not in rows[0]:
        raise ValueError(f"intermediate {it.split} split has no field '{it.text_field}' "
                         f"(fields: {sorted(rows[0])})")
    sentences = [words for r in rows if r.get(it.text_field) is not None
                 for sent in _SENTENCE_END.split(str(r[it.text_field])) if (words := sent.split())]
    counts = np.bincount([len(w) for w in sentences] or [0], minlength=it.min_words + 1)
    at_least = np.cumsum(counts[::-1])[::-1]  # at_least[k]: sentences of >= k words
    need = it.n_examples
    qualifying = int(at_least[it.min_words])
    used = it.min_words
    while used > min(it.min_words_floor, it.min_words) and at_least[used] < need:
        used -= 1
    pool = [i for i, w in enumerate(sentences) if len(w) >= used]
    reserve = math.ceil(0.2 * len(sentences)) if fits else 0
    from_pool = max(0, reserve - (len(sentences) - len(pool)))
    count = min(need, max(0, len(pool) - from_pool))
    rng = random.Random(p.seed * 1000 + 6)
    picked = rng.sample(pool, count)
    chosen = [" ".join(sentences[i][: it.max_words]) for i in picked]
    fit_on: list[str] = []
    if fits:
        taken, texts = set(picked), set(chosen)
        fit_on = [" ".join(w) for i, w in enumerate(sentences)
                  if i not in taken and " ".join(w[: it.max_words]) not in texts]
        if len(fit_on) > GENERATOR_MAX_SENTENCES:
            fit_on = rng.sample(fit_on, GENERATOR_MAX_SENTENCES)
    report = {"source": it.source, "sentences": len(sentences), "min_words": it.min_words,
              "qualifying": qualifying, "min_words_used": used, "qualifying_used": len(pool),
              "selected": count, "generator_sentences": len(fit_on)}
    if qualifying < 2 * need:
        extra = (f"; min_words lowered to {used} ({len(pool)} qualify)" if used < it.min_words else "")
        extra += f"; {count} sentences to fake instead of {need}" if count < need else ""
        ctx.logger.warning("data_prep: only %d of %d sentences in the intermediate source have "
                           ">= %d words (want >= 2 x n_examples = %d)%s", qualifying,
                           len(sentences), it.min_words, 2 * need, extra)
    return chosen, fit_on, report


def _generator(p: DataPrepParams, fit_on: Sequence[str], ctx: StageContext) -> Callable:
    it = p.intermediate
    if it.generator == "builtin":
        if not fit_on:
            raise ValueError("intermediate: no sentences left to fit the fake-ending generator on "
                             "(the source is too small)")
        return builtin_world.NgramGenerator(list(fit_on)).continue_text
    return _causal_lm_generator(it, ctx)


def _causal_lm_generator(it: IntermediateData, ctx: StageContext) -> Callable:
    """Fake endings from a causal LM (GPT-2 medium in the paper), top-p sampling."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(it.generator)
    lm = AutoModelForCausalLM.from_pretrained(it.generator).to(ctx.device).eval()

    def generate(prompt: str, n_words: int, rng: random.Random) -> str:
        torch.manual_seed(rng.randrange(2**31))
        ids = tok(prompt, return_tensors="pt").to(ctx.device)
        with torch.no_grad():
            out = lm.generate(**ids, do_sample=True, top_p=it.top_p, temperature=it.temperature,
                              max_new_tokens=3 * n_words + 5, pad_token_id=tok.eos_token_id)
        text = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
        return " ".join(text.split()[:n_words])

    return generate


# ---------------------------------------------------------------- tokenizing


def _builtin_tokenizer(texts: Sequence[str], out_dir: Path, vocab_size: int = 30000,
                       min_frequency: int = 1):
    """A word-level tokenizer built locally with `tokenizers` (no hub): at most vocab_size
    entries (specials included), the words seen at least min_frequency times."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials))
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(out_dir)
    return fast


def load_tokenizer(path: str | Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


LENGTH_SAMPLE = 20_000  # texts tokenized to measure lengths (a seeded sample beyond that)


def token_lengths(tok, first: list[str], second: list[str] | None, seed: int = 0) -> np.ndarray:
    """Tokenized lengths (special tokens included, nothing truncated) of up to LENGTH_SAMPLE
    texts or pairs."""
    idx = list(range(len(first)))
    if len(idx) > LENGTH_SAMPLE:
        idx = sorted(random.Random(seed).sample(idx, LENGTH_SAMPLE))
    if not idx:
        return np.zeros(0, dtype=np.int64)
    a = [first[i] for i in idx]
    b = [second[i] for i in idx] if second is not None else None
    enc = tok(a, b, truncation=False, verbose=False)
    return np.array([len(ids) for ids in enc["input_ids"]], dtype=np.int64)


def auto_max_length(lengths: Sequence[np.ndarray], percentile: float, tok=None) -> int:
    """The largest of the lengths' percentiles (an observed length), clamped to MAX_LENGTH_AUTO
    (and to the tokenizer's own limit)."""
    low, high = MAX_LENGTH_AUTO
    limit = getattr(tok, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < 10**6:
        high = max(low, min(high, limit))
    found = [int(np.percentile(x, percentile, method="higher")) for x in lengths if len(x)]
    return int(min(max(max(found, default=low), low), high))


def _encode(tok, first: list[str], second: list[str] | None, max_length: int) -> dict[str, np.ndarray]:
    enc = tok(first, second, padding="max_length", truncation=True, max_length=max_length,
              return_tensors="np")
    return {k: np.asarray(v, dtype=np.int32) for k, v in enc.items()}


def write_table(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    """Fixed-width int32 token arrays as parquet fixed-size lists (fast to read back)."""
    arrays, names = [], []
    for name, arr in columns.items():
        arr = np.ascontiguousarray(arr, dtype=np.int32)
        width = int(np.prod(arr.shape[1:])) if arr.ndim > 1 else 0
        flat = pa.array(arr.reshape(-1))
        arrays.append(pa.FixedSizeListArray.from_arrays(flat, width) if width else flat)
        names.append(name)
    table = pa.Table.from_arrays(arrays, names=names)
    shapes = {n: list(columns[n].shape[1:]) for n in names}
    table = table.replace_schema_metadata({"memotune_shapes": json.dumps(shapes)})
    pq.write_table(table, path)


def read_table(path: Path) -> dict[str, np.ndarray]:
    """Inverse of write_table: column name -> int array of the stored shape."""
    table = pq.read_table(path)
    shapes = json.loads(table.schema.metadata[b"memotune_shapes"])
    out = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        values = col.flatten() if shapes[name] else col
        out[name] = values.to_numpy(zero_copy_only=False).reshape(len(col), *shapes[name])
    return out


# ---------------------------------------------------------------- the stage


def guidance_indices(n: int, fraction: float, minimum: int) -> set[int]:
    """Evenly spaced train examples held out as the guidance set (Lichtarge et
    al.: every 100th): `fraction` of them, at least `minimum`, at most half."""
    count = min(max(math.ceil(n * fraction), minimum), n // 2)
    step = n / count if count else 0
    return {int(i * step) for i in range(count)}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _unk_fraction(tok, cols: Mapping[str, np.ndarray]) -> float | None:
    """Share of the (non-special, non-padding) tokens that are the unknown token."""
    unk = getattr(tok, "unk_token_id", None)
    if unk is None or "attention_mask" not in cols:
        return None
    ids = cols["input_ids"]
    special = np.isin(ids, [i for i in tok.all_special_ids if i != unk])
    real = cols["attention_mask"].astype(bool) & ~special
    return round(float((ids[real] == unk).mean()), 6) if real.any() else 0.0


def run(params: Mapping[str, Any], upstream: Mapping[str, Path], workdir: Path,
        ctx: StageContext) -> StageResult:
    p = DataPrepParams.model_validate(params)
    t = p.target
    all_train, all_val = _target_rows(p)
    labels = class_labels({"train": all_train, "validation": all_val}, t.label_field)
    names = sorted(set(labels["train"]) | set(labels["validation"]))
    label_id = {v: i for i, v in enumerate(names)}
    unseen = sorted(set(labels["validation"]) - set(labels["train"]))
    if unseen:
        ctx.logger.warning("data_prep: validation labels that the train split does not have: %s",
                           ", ".join(map(str, unseen[:10])))
    picks = {"train": sample_indices(labels["train"], t.n_train, f"train:{t.sample_seed}",
                                     t.stratify),
             "validation": sample_indices(labels["validation"], t.n_validation,
                                          f"validation:{t.sample_seed}", t.stratify)}
    f = t.text_fields

    def examples(split: str, rows: list[dict]) -> list[tuple[str, str | None, int]]:
        return [(_text(rows[i][f[0]]), _text(rows[i][f[1]]) if len(f) == 2 else None,
                 label_id[labels[split][i]]) for i in picks[split]]

    train, val = examples("train", all_train), examples("validation", all_val)
    if len({e[2] for e in train}) < 2:
        raise ValueError(f"target train split: label column {t.label_field!r} has one class "
                         f"({', '.join(sorted({str(names[e[2]]) for e in train}))}) in the "
                         f"{len(train)} rows used; a classifier needs at least two")

    realfake: list[dict] = []
    sentences: list[str] = []
    report: dict[str, Any] = {}
    if p.intermediate.task == "realfake":
        sentences, fit_on, report = _intermediate_sentences(p, ctx)
        gen = _generator(p, fit_on, ctx)
        realfake = builtin_world.realfake_examples(sentences, gen, p.intermediate.n_choices,
                                                   seed=p.seed * 1000 + 5)
        if not realfake:
            raise ValueError("intermediate: no real/fake examples could be made from the source")
        report["examples"] = len(realfake)

    if p.tokenizer == "builtin":  # vocabulary from all training text, not only the rows used
        texts = [" ".join(_text(r[c]) for c in f) for r in all_train] + sentences
        texts += [e for r in realfake for e in r["endings"]]
        tok = _builtin_tokenizer(texts, workdir / "tokenizer", p.vocab_size, p.min_frequency)
    else:
        tok = load_tokenizer(p.tokenizer)
        tok.save_pretrained(workdir / "tokenizer")

    def pairs(rows: list[tuple[str, str | None, int]]) -> tuple[list[str], list[str] | None]:
        return [e[0] for e in rows], ([e[1] or "" for e in rows] if len(f) == 2 else None)

    # one text per choice: prompt + ending, like a sentence of the target task
    choice_texts = [f"{r['prompt']} {e}" for r in realfake for e in r["endings"]]
    lengths = {"target_train": token_lengths(tok, *pairs(train), seed=p.seed),
               "target_validation": token_lengths(tok, *pairs(val), seed=p.seed),
               "intermediate_train": token_lengths(tok, choice_texts, None, seed=p.seed)}
    q = p.max_length_percentile
    max_length = p.max_length if p.max_length != "auto" else auto_max_length(
        [lengths["target_train"], lengths["intermediate_train"]], q, tok)

    guide_idx = guidance_indices(len(train), p.guidance_fraction, p.guidance_min)
    guide = [r for i, r in enumerate(train) if i in guide_idx]
    train = [r for i, r in enumerate(train) if i not in guide_idx]

    def target_columns(rows: list[tuple[str, str | None, int]]) -> dict[str, np.ndarray]:
        cols = _encode(tok, *pairs(rows), max_length)
        cols["labels"] = np.array([e[2] for e in rows], dtype=np.int32)
        return cols

    val_cols = target_columns(val)
    write_table(workdir / "target_train.parquet", target_columns(train))
    write_table(workdir / "target_validation.parquet", val_cols)
    write_table(workdir / "guidance.parquet", target_columns(guide))
    n_choices = p.intermediate.n_choices
    if realfake:
        cols = _encode(tok, choice_texts, None, max_length)
        cols = {k: v.reshape(len(realfake), n_choices, -1) for k, v in cols.items()}
        cols["labels"] = np.array([r["label"] for r in realfake], dtype=np.int32)
        write_table(workdir / "intermediate_train.parquet", cols)

    def label_counts(rows: list[tuple[str, str | None, int]]) -> dict[str, int]:
        found = np.bincount([e[2] for e in rows], minlength=len(names))
        return {str(v): int(found[i]) for i, v in enumerate(names)}

    info = {
        "num_labels": len(names), "label_names": [str(v) for v in names],
        "labels": {"train": label_counts(train), "validation": label_counts(val),
                   "guidance": label_counts(guide)},
        "n_choices": n_choices if realfake else 0, "max_length": max_length,
        "lengths": {"max_length": p.max_length, "percentile": q,
                    "at_percentile": {k: int(np.percentile(v, q, method="higher"))
                                      for k, v in lengths.items() if len(v)},
                    "truncated": {k: round(float((v > max_length).mean()), 6)
                                  for k, v in lengths.items() if len(v)}},
        "vocab_size": len(tok), "tokenizer": p.tokenizer,
        "unk_fraction": {"target_validation": _unk_fraction(tok, val_cols)},
        "sampling": {"seed": t.sample_seed, "stratify": t.stratify,
                     "train": {"rows": len(all_train), "used": len(picks["train"])},
                     "validation": {"rows": len(all_val), "used": len(picks["validation"])}},
        "intermediate": report,
        "counts": {"target_train": len(train), "target_validation": len(val),
                   "guidance": len(guide), "intermediate_train": len(realfake)},
    }
    (workdir / "info.json").write_text(json.dumps(info, indent=2))
    shown = ", ".join(f"{v} {info['labels']['train'][str(v)]}/{info['labels']['validation'][str(v)]}"
                      for v in names[:10]) + (", ..." if len(names) > 10 else "")
    unk = info["unk_fraction"]["target_validation"]
    ctx.logger.info(
        "data_prep: %d labels (train/validation rows): %s; max_length %d%s, truncating %.1f%% of "
        "train texts; vocabulary %d%s; %s", len(names), shown, max_length,
        f" (auto: {q:g}th percentile)" if p.max_length == "auto" else "",
        100 * info["lengths"]["truncated"].get("target_train", 0.0), len(tok),
        f" ({100 * unk:.1f}% of validation tokens unknown)" if unk is not None else "",
        info["counts"])
    metrics = {k: float(v) for k, v in info["counts"].items()}
    metrics.update(num_labels=float(len(names)), max_length=float(max_length),
                   vocab_size=float(len(tok)))
    return StageResult(metrics=metrics, meta=info)
