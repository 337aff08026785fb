"""Input validation beyond the params models' own field types, in two steps.

1. `check_values(cfg)` (pure, no I/O): run by `flows.config` on every config,
   `--set` override and tuner candidate, after pydantic (which, with the strict
   pass in `flows.config._validate`, already refuses wrong types and
   non-finite numbers). It adds what the models do not say:

   - an upper bound on every number (`BOUNDS`: no epochs of 10**12, no batch
     of 10**23, no learning rate above 10), and seeds in [0, 2**32 - 1];
   - cross-field rules: min_words <= max_words, attention heads divide the
     hidden size, a csv/tsv/json/jsonl/parquet source names its splits in
     data_files;
   - text fields are non-empty, printable and on one line.

2. `check_sources(cfg)` (filesystem and hub): run by the CLI before the store
   is opened and before data files are fingerprinted. Data files must be
   existing files (not directories) or globs that match some; tokenizer,
   model, generator and hub dataset names must be a local directory, in the
   local Hugging Face cache, or found on the hub within `HUB_TIMEOUT_S`
   (where the hub is unreachable or HF_HUB_OFFLINE is set, a name that is
   neither local nor cached is refused). Then `check_data` opens each data
   file a run reads with data_prep's own reader and reads its head (a few KB):
   an empty file, a wrong delimiter (named: which one to set), a missing text
   or label column (the columns present named), a file without rows, or a
   target train label column with one class is refused.

Why not `Field(le=...)` on the params models themselves: their modules'
source is part of the stages' cache keys (`Stage.code`), so editing them would
re-key, and so orphan, every cached entry. These rules only refuse input; a
config they accept has exactly the params dicts, and keys, it had before.

Every error is a `ConfigError` whose message is one line that names the field.
"""

from __future__ import annotations

import fnmatch
import glob
import math
import os
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stages.params import FILE_FORMATS as DATA_FILE_FORMATS

if TYPE_CHECKING:
    from flows.config import PipelineConfig

__all__ = ["BOUNDS", "ConfigError", "bound_for", "check_data", "check_dispatch", "check_sources",
           "check_values", "one_line", "show_value"]

FILE_FORMATS = tuple(DATA_FILE_FORMATS)  # csv, tsv, json, jsonl, parquet
STAGES = ("data_prep", "intermediate_finetune", "target_finetune", "evaluate")
SEED_MAX = 2**32 - 1
MAX_TEXT = 4096
HUB_TIMEOUT_S = 1.5


class ConfigError(ValueError):
    """Bad config: the message names the file and the field, on one line."""

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


def one_line(text: str) -> str:
    """text on one line: line breaks become spaces, other unprintables are escaped."""
    joined = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in joined)


def show_value(value: Any, limit: int = 60) -> str:
    """A short, one-line rendering of a user value for an error message."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 10_000 else 'many'} digits"
    text = repr(value)
    return one_line(text if len(text) <= limit else text[: limit - 3] + "...")


# ---------------------------------------------------------------- bounds

# Inclusive (low, high) per dotted path; None: only the params model's own bound.
# `*` in a pattern matches any text (fnmatch). Every numeric setting of every
# stage and optimizer mode has an entry (tests/flows/test_validation.py checks).
BOUNDS: dict[str, tuple[float | None, float | None]] = {
    "data_prep.target.n_train": (None, 10**8),
    "data_prep.target.n_validation": (None, 10**8),
    "data_prep.target.sample_seed": (0, SEED_MAX),
    "data_prep.intermediate.n_examples": (None, 10**7),
    "data_prep.intermediate.n_choices": (None, 16),
    "data_prep.intermediate.min_words": (None, 1000),
    "data_prep.intermediate.max_words": (None, 1000),
    "data_prep.intermediate.min_words_floor": (None, 1000),
    "data_prep.intermediate.top_p": (None, 1),
    "data_prep.intermediate.temperature": (None, 100),
    "data_prep.builtin.*": (None, 10**6),
    "data_prep.max_length": (None, 32768),
    "data_prep.max_length_percentile": (None, 100),
    "data_prep.vocab_size": (None, 10**7),
    "data_prep.min_frequency": (None, 10**9),
    "data_prep.guidance_fraction": (None, 0.5),
    "data_prep.guidance_min": (None, 10**6),
    "*.seed": (0, SEED_MAX),
    "*_finetune.epochs": (None, 1000),
    "*_finetune.batch_size": (None, 65536),
    "*_finetune.max_steps": (None, 10**8),
    "*_finetune.guidance_size": (None, 10**6),
    "*_finetune.validation.every": (None, 1000),
    "*_finetune.validation.patience": (None, 1000),
    "*_finetune.model.builtin.hidden_size": (None, 8192),
    "*_finetune.model.builtin.layers": (None, 128),
    "*_finetune.model.builtin.heads": (None, 128),
    "*_finetune.model.builtin.intermediate_size": (None, 32768),
    "*_finetune.model.builtin.dropout": (None, 1),
    # optimizer settings, every mode: learning rates (initial, bounds, meta,
    # hyper, line-search step sizes) are at most 10
    "*_finetune.optimizer.lr": (None, 10),
    "*_finetune.optimizer.lr_min": (None, 10),
    "*_finetune.optimizer.lr_max": (None, 10),
    "*_finetune.optimizer.hypergrad_lr": (None, 10),
    "*_finetune.optimizer.meta_lr": (None, 10),
    "*_finetune.optimizer.fallback_step_size": (None, 10),
    "*_finetune.optimizer.weight_decay": (None, 10),
    "*_finetune.optimizer.grad_clip": (None, 1e6),
    "*_finetune.optimizer.warmup": (None, 1),
    "*_finetune.optimizer.decay": (None, 1),  # wsd: its pydantic field refuses 0 and 1
    "*_finetune.optimizer.label_smoothing": (None, 1),
    "*_finetune.optimizer.beta1": (None, 1),
    "*_finetune.optimizer.beta2": (None, 1),
    "*_finetune.optimizer.eps": (None, 1),
    "*_finetune.optimizer.n_groups": (None, 10_000),
    "*_finetune.optimizer.guide_batch_size": (None, 65536),
    "*_finetune.optimizer.nan_guard": (None, 1e6),
    "*_finetune.optimizer.hypergrad_clip": (None, 1e6),
    "*_finetune.optimizer.c": (None, 1),
    "*_finetune.optimizer.beta_backtrack": (None, 1),
    "*_finetune.optimizer.gamma": (None, 10),
    "*_finetune.optimizer.n_batches_per_epoch": (None, 10**8),
    "*_finetune.optimizer.max_trials": (None, 10_000),
    "*_finetune.optimizer.n_global_steps": (None, 10**8),
    "evaluate.batch_size": (None, 65536),
}
_FALLBACK: tuple[float | None, float | None] = (-(10**9), 10**9)


def bound_for(path: str) -> tuple[float | None, float | None] | None:
    """The (low, high) bound of a dotted setting path, or None if it has none."""
    if path in BOUNDS:
        return BOUNDS[path]
    for pattern, bound in BOUNDS.items():
        if "*" in pattern and fnmatch.fnmatchcase(path, pattern):
            return bound
    return None


# ---------------------------------------------------------------- step 1: values


def _leaves(node: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(node, Mapping):
        for k, v in node.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(node, list | tuple):
        for i, v in enumerate(node):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, node


def _check_number(path: str, value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{path}: must be a finite number, got {value}")
    low, high = bound_for(path) or _FALLBACK
    if low is not None and value < low:
        raise ConfigError(f"{path}: must be at least {low} (got {show_value(value)})")
    if high is not None and value > high:
        raise ConfigError(f"{path}: must be at most {high} (got {show_value(value)})")


def _check_text(path: str, value: str) -> None:
    if not value.strip():
        raise ConfigError(f"{path}: must not be empty")
    if len(value) > MAX_TEXT:
        raise ConfigError(f"{path}: longer than {MAX_TEXT} characters")
    if not value.isprintable():
        raise ConfigError(f"{path}: {show_value(value)} has a line break or control character")


def check_values(cfg: PipelineConfig) -> None:
    """Bounds, text and cross-field rules on a config pydantic accepted; raises ConfigError."""
    _check_text("name", cfg.name)
    for stage in STAGES:
        for path, value in _leaves(cfg.stage_params(stage), stage):
            if isinstance(value, bool) or value is None:
                continue
            if isinstance(value, int | float):
                _check_number(path, value)
            elif isinstance(value, str) and not path.endswith(".delimiter"):
                _check_text(path, value)  # a delimiter (a tab, say) is checked by its model
    dp = cfg.data_prep
    it = dp.intermediate
    if it.min_words > it.max_words:
        raise ConfigError(f"data_prep.intermediate.min_words: must be <= max_words "
                          f"({it.max_words}), got {it.min_words}")
    for src, prefix, splits in (
        (dp.target, "data_prep.target", (dp.target.train_split, dp.target.validation_split)),
        (it, "data_prep.intermediate", (it.split,) if it.task == "realfake" else ()),
    ):
        for key in src.data_files or {}:
            _check_text(f"{prefix}.data_files", key)
        if src.source in FILE_FORMATS:
            missing = [s for s in splits if s not in (src.data_files or {})]
            if missing:
                raise ConfigError(
                    f"{prefix}.data_files: source {src.source!r} needs data_files with the "
                    f"split(s) {', '.join(repr(s) for s in missing)} (e.g. "
                    f"{{{', '.join(f'{s}: file.{src.source}' for s in splits)}}})")
    for stage in ("intermediate_finetune",):
        b = getattr(cfg, stage).model.builtin
        if b.hidden_size % b.heads:
            raise ConfigError(f"{stage}.model.builtin.heads: must divide hidden_size "
                              f"({b.hidden_size}), got {b.heads}")
    _check_search_bounds(cfg.search)


def _check_search_bounds(search: Mapping[str, Mapping[str, Any]]) -> None:
    """A searched range stays inside its setting's bounds (else a trial fails mid-study).

    `search` is the config's typed section (tuners.search_spec)."""
    for stage, params in search.items():
        for name, typed in params.items():
            bound = bound_for(f"{stage}.{name}")
            if bound is None:
                continue
            low, high = bound
            spec = typed.model_dump()
            choices = spec.get("choices")
            values = [(k, spec.get(k)) for k in ("low", "high")]
            values += [(f"choices[{i}]", c) for i, c in enumerate(choices)
                       ] if isinstance(choices, list) else []
            for key, value in values:
                if isinstance(value, bool) or not isinstance(value, int | float):
                    continue
                if (low is not None and value < low) or (high is not None and value > high):
                    limits = " and ".join(t for t in (
                        f"at least {low}" if low is not None else "",
                        f"at most {high}" if high is not None else "") if t)
                    raise ConfigError(f"search.{stage}.{name}.{key}: {show_value(value)} is "
                                      f"outside the setting's range ({limits})")


def check_dispatch(parallel: int, deployment: str | None) -> None:
    """How a study's trials run: `parallel` at once (>= 1; more than one only as flow runs
    of a `deployment`, named 'flow-name/deployment-name'). Checked by `memotune tune`
    before anything starts and by the tune flow itself (run from a deployment, say)."""
    if isinstance(parallel, bool) or not isinstance(parallel, int) or parallel < 1:
        raise ConfigError(f"--parallel must be >= 1, got {show_value(parallel)}")
    if parallel > 1 and deployment is None:
        raise ConfigError("--parallel needs --deployment: parallel trials run as flow runs on "
                          "a work pool (see deployments/prefect.yaml)")
    if deployment is not None and (not isinstance(deployment, str) or deployment.count("/") != 1):
        raise ConfigError(f"--deployment: expected 'flow-name/deployment-name', "
                          f"got {show_value(deployment)}")


# ---------------------------------------------------------------- step 2: sources


def check_sources(cfg: PipelineConfig) -> None:
    """Data files exist and are files; model, tokenizer and dataset names resolve.

    Touches the filesystem (and the hub, with a short timeout, only for a name
    that is neither a local directory nor in the local Hugging Face cache).
    Raises ConfigError naming the field.
    """
    dp = cfg.data_prep
    realfake = dp.intermediate.task == "realfake"
    for prefix, src, used in (("data_prep.target", dp.target, True),
                              ("data_prep.intermediate", dp.intermediate, realfake)):
        for split, uris in (src.data_files or {}).items():
            for uri in [uris] if isinstance(uris, str) else uris:
                _check_data_file(f"{prefix}.data_files.{split}", uri)
        if used and src.source != "builtin" and src.source not in FILE_FORMATS:
            _check_pretrained(f"{prefix}.source", src.source, "dataset", src.revision)
    if realfake and dp.intermediate.generator != "builtin":
        _check_pretrained("data_prep.intermediate.generator", dp.intermediate.generator, "model")
    if dp.tokenizer != "builtin":
        _check_pretrained("data_prep.tokenizer", dp.tokenizer, "tokenizer")
    name = cfg.intermediate_finetune.model.name_or_path
    if name is not None:
        _check_pretrained("intermediate_finetune.model.name_or_path", name, "model")
    check_data(cfg)


def check_data(cfg: PipelineConfig) -> None:
    """Each data file a run reads can be read as configured (`stages.data_prep.check_split`:
    the stage's own readers, a few KB per file). Raises ConfigError naming the field and file."""
    dp = cfg.data_prep
    t, it = dp.target, dp.intermediate
    reads = []
    if t.source in FILE_FORMATS:
        reads += [("data_prep.target", t, t.train_split, [*t.text_fields, t.label_field],
                   t.label_field),
                  ("data_prep.target", t, t.validation_split, [*t.text_fields, t.label_field],
                   None)]
    if it.task == "realfake" and it.source in FILE_FORMATS:
        reads.append(("data_prep.intermediate", it, it.split, [it.text_field], None))
    if not reads:
        return
    from cache.keys import redact
    from stages.data_prep import DataFileError, check_split  # numpy, pyarrow: only for files

    for prefix, src, split, columns, label in reads:
        field = f"{prefix}.data_files.{split}"
        try:
            check_split(src, split, columns, label, where=prefix)
        except DataFileError as e:
            raise ConfigError(f"{field}: {redact(e.uri)}: {redact(e.problem)}") from None
        except Exception as e:  # anything else reading it (a remote store, a codec): one line
            raise ConfigError(f"{field}: cannot read {redact(str(src.data_files[split]))}: "
                              f"{type(e).__name__}: {redact(one_line(str(e)))[:200]}") from None


def _check_data_file(field: str, uri: str) -> None:
    from fsspec.core import split_protocol, url_to_fs

    from cache.keys import redact

    shown = redact(uri)
    protocol, path = split_protocol(uri)
    if protocol in (None, "file", "local"):
        path = os.path.expanduser(path)
        if any(c in path for c in "*?["):
            if not any(os.path.isfile(m) for m in glob.iglob(path, recursive=True)):
                raise ConfigError(f"{field}: {shown} matches no file")
            return
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"{field}: data file not found: {shown}")
        if p.is_dir():
            raise ConfigError(f"{field}: {shown} is a directory; name its files "
                              f"(or a glob such as {shown.rstrip('/')}/*.csv)")
        if not os.access(p, os.R_OK):
            raise ConfigError(f"{field}: {shown} is not readable")
        return
    try:
        fs, fpath = url_to_fs(uri)
    except (ValueError, ImportError) as e:
        raise ConfigError(f"{field}: {shown}: unsupported protocol {protocol!r} "
                          f"({one_line(str(e))[:120]})") from None
    if any(c in fpath for c in "*?["):
        return  # expanded (and a no-match refused) when the data is fingerprinted
    try:
        info = fs.info(fpath)
    except FileNotFoundError:
        raise ConfigError(f"{field}: data file not found: {shown}") from None
    except Exception as e:  # any failure to reach it is reported the same way
        raise ConfigError(f"{field}: cannot reach {shown}: {type(e).__name__}: "
                          f"{redact(one_line(str(e)))[:200]}") from None
    if info.get("type") == "directory":
        raise ConfigError(f"{field}: {shown} is a directory; name its files (or a glob)")


# files that show a local directory (or a cached hub repo) is what the field needs
_NEEDS: dict[str, tuple[str, ...]] = {
    "model": ("config.json",),
    "tokenizer": ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "vocab.json",
                  "tokenizer.model", "spiece.model", "sentencepiece.bpe.model"),
}
_TRUE = {"1", "ON", "YES", "TRUE"}


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", "./", "../", "~", ".\\")) or "\\" in name
            or name.count("/") > 1 or name in (".", ".."))


def _check_pretrained(field: str, name: str, kind: str, revision: str | None = None) -> None:
    """A tokenizer/model/generator/dataset name: a local directory, cached, or on the hub."""
    local = Path(name).expanduser()
    if local.exists() or _looks_like_path(name):
        if not local.is_dir():
            what = "is not a directory" if local.exists() else "no such directory"
            raise ConfigError(f"{field}: {show_value(name)}: {what}")
        needs = _NEEDS.get(kind)
        if needs and not any((local / f).is_file() for f in needs):
            raise ConfigError(f"{field}: {show_value(name)} has no {' or '.join(needs[:2])}"
                              f"{' (or another tokenizer file)' if len(needs) > 2 else ''}")
        if not needs and not any(local.iterdir()):
            raise ConfigError(f"{field}: {show_value(name)} is an empty directory")
        return
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ConfigError(f"{field}: {show_value(name)} is neither a local directory nor a "
                          f"valid hub name") from None
    if _in_hf_cache(name, kind, revision):
        return
    if _offline(kind):
        raise ConfigError(f"{field}: {show_value(name)} is neither a local directory nor in the "
                          f"Hugging Face cache, and the hub is off (HF_HUB_OFFLINE)")
    _ask_hub(field, name, kind, revision)


def _offline(kind: str) -> bool:
    from huggingface_hub import constants

    flags = ["HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE" if kind == "dataset" else "TRANSFORMERS_OFFLINE"]
    return bool(constants.HF_HUB_OFFLINE) or any(
        os.environ.get(f, "").strip().upper() in _TRUE for f in flags)


def _in_hf_cache(name: str, kind: str, revision: str | None) -> bool:
    from huggingface_hub import constants, try_to_load_from_cache

    if kind == "dataset":
        hub = Path(constants.HF_HUB_CACHE) / f"datasets--{name.replace('/', '--')}" / "snapshots"
        datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE")
                              or Path(constants.HF_HOME) / "datasets")
        return hub.is_dir() or (datasets_cache / name.replace("/", "___")).is_dir()
    for filename in _NEEDS[kind]:
        try:
            found = try_to_load_from_cache(name, filename, revision=revision)
        except Exception:  # an unreadable cache is the same as no cache
            return False
        if isinstance(found, str):
            return True
    return False


def _ask_hub(field: str, name: str, kind: str, revision: str | None) -> None:
    """model_info / dataset_info with a short timeout, in a daemon thread (DNS can hang)."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    api = HfApi()
    info = api.dataset_info if kind == "dataset" else api.model_info
    outcome: list[BaseException | None] = []

    def ask() -> None:
        try:
            info(name, revision=revision, timeout=HUB_TIMEOUT_S)
            outcome.append(None)
        except BaseException as e:  # handed to the caller's thread
            outcome.append(e)

    thread = threading.Thread(target=ask, daemon=True, name="memotune-hub-check")
    thread.start()
    thread.join(HUB_TIMEOUT_S + 0.3)
    what = "dataset" if kind == "dataset" else "model repo"
    if not outcome:
        raise ConfigError(f"{field}: {show_value(name)} is neither a local directory nor in the "
                          f"Hugging Face cache, and the hub is unreachable (no answer in "
                          f"{HUB_TIMEOUT_S} s)")
    error = outcome[0]
    if error is None or isinstance(error, GatedRepoError):
        return  # exists (a gated repo needs a token at run time, not here)
    if isinstance(error, RevisionNotFoundError):
        raise ConfigError(f"{field}: revision {show_value(revision)} of {show_value(name)} "
                          f"not found on the hub")
    if isinstance(error, RepositoryNotFoundError):
        raise ConfigError(f"{field}: {show_value(name)}: no such {what} on the hub "
                          f"(not found; a private one needs `hf auth login`) nor a local directory")
    raise ConfigError(f"{field}: {show_value(name)} is neither a local directory nor in the "
                      f"Hugging Face cache, and the hub is unreachable "
                      f"({type(error).__name__}: {one_line(str(error))[:120]})")
