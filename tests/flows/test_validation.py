"""Input validation: every bad input is refused with one plain line, up front.

Three layers: targeted regressions (each case a fuzz probe once found: a
traceback, a bad value accepted, or a failure only at run time after the store
was written), a property-based fuzz of `load_config` over mutations of the
default config, and a small fuzz of the real `memotune plan` command.

Bad input ends in exactly one line on stderr that names the field, file or URL,
exit code 2, and nothing written to the store; a config that loads has every
value in its domain, with nothing coerced from another type.
"""

from __future__ import annotations

import copy
import json
import math
import os
import random
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from flows.cli import app
from flows.config import ConfigError, load_config, parse_override, set_dotted

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
EXAMPLE = Path(__file__).parents[2] / "examples" / "offline_default.yaml"
runner = CliRunner()
MODES = ("adamw", "hypergradient", "lookahead", "adam_sls", "pla_sls")
FINETUNE = ("intermediate_finetune", "target_finetune")


# ---------------------------------------------------------------- helpers


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A `memotune` environment that touches nothing outside tmp_path and no network."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEMOTUNE_", "HF_", "PREFECT_API", "AWS_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false", **extra)
    return env


def memotune(tmp_path: Path, *args: str, command: str = "plan",
             env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([MEMOTUNE, command, *args], capture_output=True, text=True,
                          env=env or _env(tmp_path), cwd=tmp_path, timeout=180)


def _tree(path: Path) -> set[str]:
    """Everything under path, except the private HOME and HF_HOME of `_env`."""
    if not path.exists():
        return set()
    names = {str(p.relative_to(path)) for p in path.rglob("*")}
    return {n for n in names if n.split(os.sep)[0] not in ("home", "hf")}


def assert_refused(proc: Any, store: Path | None, *needles: str) -> str:
    """Exit 2, exactly one plain line on stderr naming the input, nothing on stdout."""
    stderr = proc.stderr
    assert proc.returncode == 2, (proc.returncode, stderr[-3000:])
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr[-3000:]
    assert lines[0].startswith("error: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == ""
    if store is not None:
        assert not store.exists()
    return lines[0]


def refused_by_config(*overrides: str, doc: dict | None = None, path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, list(overrides), doc=doc)
    msg = str(info.value)
    assert len(msg.splitlines()) == 1 and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- tracebacks (real CLI)


def test_unclosed_yaml_flow_in_set_is_one_line(tmp_path):
    store = tmp_path / "store"
    line = assert_refused(memotune(tmp_path, "--store", str(store), "--set", "a.b={x: 1"),
                          store, "--set", "a.b")
    assert "YAML" in line


def test_inf_string_in_a_float_field_is_refused(tmp_path):
    store = tmp_path / "store"
    assert_refused(memotune(tmp_path, "--store", str(store), "--set",
                            "target_finetune.optimizer.lr=inf"), store, "target_finetune", "lr")


@pytest.mark.parametrize("content", [
    "name: x\n".encode("utf-16"),
    b"name: x\n\x00\xff\xfe\x80binary",
    bytes(range(256)),
], ids=["utf16", "binary", "all-bytes"])
def test_non_utf8_config_file_is_one_line(tmp_path, content):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_bytes(content)
    store = tmp_path / "store"
    line = assert_refused(memotune(tmp_path, str(cfg), "--store", str(store)), store, str(cfg))
    assert "UTF-8" in line


def test_store_url_with_credentials_and_markup_is_printed_plainly(tmp_path):
    # the error text has "[/:]" in it: with rich markup it was a MarkupError traceback
    proc = memotune(tmp_path, "--store", "s3://user:pass@bucket/x",
                    env=_env(tmp_path, AWS_ENDPOINT_URL="http://127.0.0.1:9"))
    assert_refused(proc, None, "s3://***@bucket/x")


def test_store_error_text_is_not_read_as_markup(tmp_path):
    blocker = tmp_path / "a b[red]x[bold]"
    blocker.write_text("not a directory")
    before = _tree(tmp_path)
    proc = memotune(tmp_path, "--store", str(blocker / "store"))
    assert_refused(proc, None, str(blocker))  # the brackets are shown, not eaten as styles
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("url", ["ftp://host/[x]", " "])
def test_unsupported_or_empty_store_url_is_one_line(tmp_path, url):
    # the checks are cache.store's (StoreError); the CLI prints them as one plain line
    before = _tree(tmp_path)
    assert_refused(memotune(tmp_path, "--store", url), None, "store")
    assert _tree(tmp_path) == before


def test_data_files_directory_is_refused_before_hashing(tmp_path):
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "x.csv").write_text("text,label\na,1\n")
    val = tmp_path / "val.csv"
    val.write_text("text,label\na,1\n")
    store = tmp_path / "store"
    assert_refused(memotune(tmp_path, "--store", str(store),
                            "--set", "data_prep.target.source=csv",
                            "--set", f"data_prep.target.data_files={{train: '{folder}', "
                                     f"validation: '{val}'}}"),
                   store, "data_prep.target.data_files", str(folder), "directory")


# ---------------------------------------------------------------- accepted, should be refused


@pytest.mark.parametrize("override, needles", [
    ("target_finetune.optimizer.lr=.inf", ("target_finetune", "lr")),
    ("data_prep.intermediate.temperature=.inf", ("data_prep.intermediate.temperature",)),
    ("target_finetune.optimizer.grad_clip=.inf", ("target_finetune", "grad_clip")),
    ("target_finetune.optimizer.lr=1e400", ("target_finetune", "lr")),
    ("target_finetune.optimizer.lr=true", ("target_finetune", "lr")),
    ("target_finetune.optimizer.weight_decay=false", ("target_finetune", "weight_decay")),
    ("target_finetune.epochs='5'", ("target_finetune.epochs",)),
    ("evaluate.batch_size='256'", ("evaluate.batch_size",)),
    ("target_finetune.epochs=true", ("target_finetune.epochs",)),
    ("intermediate_finetune.enabled=1", ("intermediate_finetune.enabled",)),
    ("intermediate_finetune.enabled='yes'", ("intermediate_finetune.enabled",)),
    ("target_finetune.optimizer.lr='0.1'", ("target_finetune", "lr")),
    ("target_finetune.epochs=1000000000000", ("target_finetune.epochs",)),
    ("target_finetune.epochs=1e12", ("target_finetune.epochs",)),
    ("target_finetune.batch_size=100000000000000000000000", ("target_finetune.batch_size",)),
    ("evaluate.batch_size=100000000000000000000000", ("evaluate.batch_size",)),
    ("target_finetune.max_steps=100000000000000", ("target_finetune.max_steps",)),
    ("data_prep.intermediate.n_examples=100000000000000", ("data_prep.intermediate.n_examples",)),
    ("data_prep.builtin.n_train=100000000000000", ("data_prep.builtin.n_train",)),
    ("data_prep.max_length=100000000000", ("data_prep.max_length",)),
    ("intermediate_finetune.model.builtin.hidden_size=100000000", ("hidden_size",)),
    ("intermediate_finetune.model.builtin.layers=100000", ("layers",)),
    ("target_finetune.seed=-1", ("target_finetune.seed",)),
    ("data_prep.seed=100000000000000000000000", ("data_prep.seed",)),
    ("target_finetune.optimizer.lr=1e30", ("target_finetune", "lr")),
    ("intermediate_finetune.optimizer.lr=100", ("intermediate_finetune", "lr")),
    ("data_prep.intermediate.temperature=1e9", ("data_prep.intermediate.temperature",)),
    ("target_finetune.optimizer.eps=1e9", ("target_finetune", "eps")),
    ("data_prep.intermediate.min_words=40", ("min_words", "max_words")),
    ("intermediate_finetune.model.builtin.heads=3", ("heads", "hidden_size")),
    ("data_prep.target.label_field=''", ("data_prep.target.label_field",)),
    ('name="a\\nb"', ("name",)),
])
def test_bad_values_are_refused_by_load_config(override, needles):
    msg = refused_by_config(override)
    for needle in needles:
        assert needle in msg, (needle, msg)


def test_optimizer_mode_settings_are_bounded_too():
    base = ["target_finetune.optimizer.mode=hypergradient"]
    assert "hypergrad_lr" in refused_by_config(*base, "target_finetune.optimizer.hypergrad_lr=1e9")
    assert "n_groups" in refused_by_config(*base, "target_finetune.optimizer.n_groups=10000000000")
    sls = ["target_finetune.optimizer.mode=adam_sls"]
    assert "max_trials" in refused_by_config(*sls, "target_finetune.optimizer.max_trials=1e15")
    assert "gamma" in refused_by_config(*sls, "target_finetune.optimizer.gamma=.inf")


def test_search_ranges_stay_inside_their_settings_bounds():
    doc = load_config().model_dump(mode="json")
    doc["search"]["target_finetune"]["optimizer.lr"]["high"] = 1e30
    msg = refused_by_config(doc=doc)
    assert "search.target_finetune.optimizer.lr.high" in msg
    assert "search.target_finetune.epochs.high" in refused_by_config(
        "search.target_finetune.epochs={type: int, low: 3, high: 1000000000000}")
    assert "search" in refused_by_config("search.target_finetune.epochs={type: int, low: .nan}")


def test_bad_values_in_a_yaml_file_name_the_file(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("target_finetune:\n  optimizer: {mode: adamw, lr: .inf}\n")
    msg = refused_by_config(path=cfg)
    assert str(cfg) in msg and "lr" in msg


def test_recursive_yaml_alias_is_one_line(tmp_path):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("search: &a {x: *a}\n")
    assert "search" in refused_by_config(path=cfg)


def test_huge_integer_literal_is_one_line():
    msg = refused_by_config("target_finetune.epochs=" + "9" * 5000)
    assert "target_finetune.epochs" in msg and len(msg) < 500


def test_csv_source_needs_its_splits_in_data_files(tmp_path):
    val = tmp_path / "val.csv"
    val.write_text("text,label\na,1\n")
    over = ["data_prep.target.source=csv", f"data_prep.target.data_files={{validation: '{val}'}}"]
    msg = refused_by_config(*over)
    assert "data_prep.target.data_files" in msg and "'train'" in msg
    assert "data_files" in refused_by_config("data_prep.target.source=json")
    inter = ["data_prep.intermediate.source=parquet",
             f"data_prep.intermediate.data_files={{validation: '{val}'}}"]
    assert "data_prep.intermediate.data_files" in refused_by_config(*inter)


def test_valid_configs_keep_their_values_and_spelling(tmp_path):
    # ints for floats, integral floats for ints, and sci-notation strings still load
    cfg = load_config(overrides=["target_finetune.optimizer.lr=1", "target_finetune.epochs=3.0",
                                 "intermediate_finetune.optimizer.lr=1e-3",
                                 "data_prep.max_length=64"])
    assert cfg.target_finetune.optimizer["lr"] == 1.0
    assert isinstance(cfg.target_finetune.optimizer["lr"], float)
    assert cfg.target_finetune.epochs == 3 and isinstance(cfg.target_finetune.epochs, int)
    assert load_config(EXAMPLE).model_dump() == load_config().model_dump()
    for mode in MODES:
        load_config(overrides=[f"target_finetune.optimizer.mode={mode}"])


# ---------------------------------------------------------------- run-time failures, caught up front


def _sources(overrides: list[str]) -> None:
    from flows.validation import check_sources

    check_sources(load_config(overrides=overrides))


@pytest.mark.parametrize("override, needle", [
    ("data_prep.tokenizer=no-such-tokenizer-xyz", "data_prep.tokenizer"),
    ("data_prep.tokenizer=/nonexistent/tokenizer", "data_prep.tokenizer"),
    ("intermediate_finetune.model.name_or_path=/nonexistent/model",
     "intermediate_finetune.model.name_or_path"),
    ("intermediate_finetune.model.name_or_path=no-org/no-such-model-xyz",
     "intermediate_finetune.model.name_or_path"),
    ("data_prep.intermediate.generator=no-such-generator-xyz", "data_prep.intermediate.generator"),
    ("data_prep.target.source=no_such_dataset_xyz", "data_prep.target.source"),
    ("data_prep.intermediate.source=no/such_dataset", "data_prep.intermediate.source"),
    ("data_prep.tokenizer='not a hub name!'", "data_prep.tokenizer"),
])
def test_unknown_models_and_datasets_are_refused_offline(monkeypatch, tmp_path, override, needle):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ConfigError) as info:
        _sources([override])
    assert needle in str(info.value) and len(str(info.value).splitlines()) == 1


def test_unknown_tokenizer_is_refused_by_the_cli_before_the_store(tmp_path):
    store = tmp_path / "store"
    assert_refused(memotune(tmp_path, "--store", str(store), "--set",
                            "data_prep.tokenizer=no-such-tokenizer-xyz"),
                   store, "data_prep.tokenizer", "no-such-tokenizer-xyz")


def test_hub_unreachable_without_offline_flag_is_refused_fast(monkeypatch, tmp_path):
    import time

    import huggingface_hub

    def unreachable(*args: Any, **kwargs: Any) -> Any:
        raise OSError("Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        _sources(["data_prep.tokenizer=some-org/some-tokenizer"])
    assert time.monotonic() - t0 < 2.0
    assert "data_prep.tokenizer" in str(info.value) and "unreachable" in str(info.value)


def test_hub_names_work_where_the_hub_is_reachable_or_cached(monkeypatch, tmp_path):
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    seen: list[str] = []

    def model_info(self: Any, repo_id: str, **kwargs: Any) -> Any:
        seen.append(repo_id)
        if repo_id == "org/missing":
            request = httpx.Request("GET", "https://huggingface.co/api/models/org/missing")
            raise RepositoryNotFoundError("404", response=httpx.Response(404, request=request))
        return object()

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    _sources(["data_prep.tokenizer=roberta-base",
              "intermediate_finetune.model.name_or_path=roberta-base"])
    assert "roberta-base" in seen
    with pytest.raises(ConfigError, match="not found"):
        _sources(["data_prep.tokenizer=org/missing"])

    # offline, a name in the local Hugging Face cache is enough
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    snap = tmp_path / "hub" / "models--org--cached" / "snapshots" / ("a" * 40)
    snap.mkdir(parents=True)
    (snap / "config.json").write_text("{}")
    (snap / "tokenizer_config.json").write_text("{}")
    (tmp_path / "hub" / "models--org--cached" / "refs").mkdir()
    (tmp_path / "hub" / "models--org--cached" / "refs" / "main").write_text("a" * 40)
    seen.clear()
    _sources(["data_prep.tokenizer=org/cached", "intermediate_finetune.model.name_or_path=org/cached"])
    assert seen == []


def test_local_model_and_tokenizer_directories_are_accepted(tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "tokenizer.json").write_text("{}")
    _sources([f"data_prep.tokenizer={model}", f"intermediate_finetune.model.name_or_path={model}"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="intermediate_finetune.model.name_or_path"):
        _sources([f"intermediate_finetune.model.name_or_path={empty}"])


def test_data_files_must_be_readable_files(tmp_path):
    val = tmp_path / "val.csv"
    val.write_text("text,label\na,1\nb,0\n")  # two classes: one is refused (test_data_inputs)
    base = ["data_prep.target.source=csv"]
    for train, needle in ((tmp_path, "directory"), (tmp_path / "nope.csv", "not found"),
                          ("foo://bucket/x.csv", "foo"), (str(tmp_path / "*.parquet"), "matches")):
        with pytest.raises((ConfigError, FileNotFoundError)) as info:
            _sources([*base, f"data_prep.target.data_files={{train: '{train}', validation: '{val}'}}"])
        assert needle in str(info.value) and "data_files" in str(info.value), str(info.value)
    _sources([*base, f"data_prep.target.data_files={{train: '{val}', validation: '{val}'}}"])


def test_every_numeric_setting_has_an_upper_bound():
    from flows.validation import bound_for

    for mode in MODES:
        cfg = load_config(overrides=[f"{s}.optimizer.mode={mode}" for s in FINETUNE])
        for stage in ("data_prep", *FINETUNE, "evaluate"):
            for path, value in _leaves(cfg.stage_params(stage), stage):
                if isinstance(value, int | float) and not isinstance(value, bool):
                    assert bound_for(path) is not None, path
        for path in _optional_numeric_paths():
            assert bound_for(path) is not None, path


def _optional_numeric_paths() -> list[str]:
    # numeric fields whose default is None (no value to find in a dump)
    return ["data_prep.target.n_train", "data_prep.target.n_validation",
            "target_finetune.max_steps", "target_finetune.optimizer.grad_clip",
            "target_finetune.optimizer.lr_max", "target_finetune.optimizer.hypergrad_clip",
            "target_finetune.optimizer.n_batches_per_epoch",
            "target_finetune.optimizer.fallback_step_size"]


# ---------------------------------------------------------------- property-based fuzz (in-process)


def _leaves(node: Any, prefix: str) -> list[tuple[str, Any]]:
    if isinstance(node, dict) and node:
        return [leaf for k, v in node.items() for leaf in _leaves(v, f"{prefix}.{k}")]
    return [(prefix, node)]


def _field_paths() -> list[str]:
    """Every leaf of the default config and of each optimizer mode (mode-qualified)."""
    base = load_config().model_dump(mode="json")
    base.pop("search")
    paths = [p for p, _ in _leaves(base, "")]
    for mode in MODES:
        cfg = load_config(overrides=[f"target_finetune.optimizer.mode={mode}"])
        for p, _ in _leaves(cfg.stage_params("target_finetune")["optimizer"], ""):
            for stage in FINETUNE:
                paths.append(f"{mode}:.{stage}.optimizer{p}")
    return sorted({p.lstrip(".") if ":" not in p else p for p in paths} | {
        "data_prep.target.data_files", "data_prep.intermediate.data_files", "search",
        "target_finetune.optimizer", "data_prep.target.text_fields"})


PATHS = _field_paths()
NUMBERS = st.one_of(
    st.integers(min_value=-5, max_value=70),
    st.integers(),
    st.sampled_from([10**12, 10**23, -(10**23), 2**63, 2**64 + 1, 10**400]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e308, 1e-320, 0.0, -0.0, 1e30, 0.5, 3.0]),
)
WEIRD_TEXT = st.sampled_from([
    "", " ", "5", "1e3", "1e400", "inf", "nan", ".inf", "true", "yes", "builtin", "csv", "adamw",
    "hypergradient", "\n", "a\nb", "a\u2028b", "[red]x[/]", "[/:]", "x" * 300, "é", "\x00"])
VALUES = st.one_of(
    st.none(), st.booleans(), NUMBERS, st.text(max_size=12), WEIRD_TEXT,
    st.lists(st.one_of(st.integers(), st.text(max_size=4), WEIRD_TEXT), max_size=3),
    st.dictionaries(st.one_of(st.text(max_size=6), WEIRD_TEXT), st.one_of(NUMBERS, WEIRD_TEXT),
                    max_size=2),
)


def _mutate(doc: dict, path: str, value: Any) -> tuple[str, str]:
    """Set path ('mode:.path': switch that stage's optimizer to mode first).

    Returns the plain path and the prefix of everything the mutation replaced.
    """
    reset = path
    if ":" in path:
        mode, path = path.split(":.", 1)
        stage = path.split(".")[0]
        doc[stage]["optimizer"] = {"mode": mode}
        reset = f"{stage}.optimizer"
    set_dotted(doc, path, value)
    return path, reset


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def _kind_ok(path: str, given: Any, loaded: Any) -> bool:
    """Nothing coerced: what loaded is what was given (ints may stand for floats and back)."""
    if given is None and path.endswith("hypergrad_lr"):
        return True  # None there means "the rule's default"
    if isinstance(loaded, bool) or isinstance(given, bool):
        return type(given) is type(loaded) and given == loaded
    if isinstance(loaded, int | float):
        return isinstance(given, int | float) and given == loaded
    if isinstance(loaded, str):
        return isinstance(given, str) and given == loaded
    return True  # lists (canonicalized) and dicts: checked by the domain rules


def _assert_in_domain(cfg: Any) -> None:
    for stage in ("data_prep", *FINETUNE, "evaluate"):
        for path, value in _leaves(cfg.stage_params(stage), stage):
            if isinstance(value, float):
                assert math.isfinite(value), path
            if isinstance(value, int | float) and not isinstance(value, bool):
                assert abs(value) <= 10**9, (path, value)
                if path.endswith(("optimizer.lr", "lr_max", "hypergrad_lr", "meta_lr")):
                    assert value <= 10, (path, value)
            if isinstance(value, str):
                assert value and len(value.splitlines()) == 1 and value.isprintable(), (path, value)
    it = cfg.data_prep.intermediate
    assert it.min_words <= it.max_words
    b = cfg.intermediate_finetune.model.builtin
    assert b.hidden_size % b.heads == 0
    for src in (cfg.data_prep.target,):
        if src.source in ("csv", "json", "parquet"):
            assert {src.train_split, src.validation_split} <= set(src.data_files or {})
    json.dumps(cfg.model_dump(mode="json"), allow_nan=False)


def _check_outcome(mutations: dict[str, Any], load: Any) -> None:
    try:
        cfg = load()
    except ConfigError as e:
        msg = str(e)
        assert msg and len(msg.splitlines()) == 1 and "\n" not in msg, msg
        parts = {part for path in mutations for part in path.split(".")[-2:]}
        assert any(part in msg for part in parts) or "--set" in msg, (msg, mutations)
        return
    _assert_in_domain(cfg)
    dump = cfg.model_dump()
    for path, value in mutations.items():
        node: Any = dump
        for part in path.split("."):
            node = node.get(part, KeyError) if isinstance(node, dict) else KeyError
        if node is not KeyError:
            assert _kind_ok(path, value, node), (path, value, node)


FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(PATHS), VALUES), min_size=1, max_size=3))
def test_fuzz_load_config_documents(mutations):
    doc = load_config().model_dump(mode="json")
    final: dict[str, Any] = {}
    for path, value in mutations:
        plain, reset = _mutate(doc, path, copy.deepcopy(value))
        final = {p: v for p, v in final.items() if not _under(p, reset) and not _under(plain, p)}
        final[plain] = value
    _check_outcome(final, lambda: load_config(doc=doc))


YAML_TEXT = st.one_of(
    st.text(max_size=16),
    st.sampled_from(["{x: 1", "[1, 2", "{a: {b: .inf}}", ".nan", "-.inf", "1e999", "0x10", "0o17",
                     "'5'", "\"a\\nb\"", "!!python/object:os.system x", "&a [*a]", "~", "[]", "{}",
                     "2024-01-01", "!!binary aGk=", "9" * 5000, "1_000", "+1", "true", "no"]),
    VALUES.map(lambda v: yaml.safe_dump(v, default_flow_style=True).strip()
               if not (isinstance(v, float) and not math.isfinite(v)) and
               not (isinstance(v, int) and abs(v) > 10**300) else ".inf"),
)


@FUZZ
@given(st.sampled_from([p for p in PATHS if ":" not in p]), YAML_TEXT)
def test_fuzz_set_overrides(path, text):
    try:
        _, value = parse_override(f"{path}={text}")
    except ConfigError:
        value = None
    _check_outcome({path: value}, lambda: load_config(overrides=[f"{path}={text}"]))


# ---------------------------------------------------------------- CLI fuzz (real processes)


# Values that no field accepts: YAML errors, non-finite numbers, numbers far out of
# every domain, wrong container types, text with line breaks or rich markup.
ALWAYS_BAD = ["{x: 1", ".inf", "-.inf", ".nan", "1e400", str(10**23), "[1, [2]]",
              "{a: {b: .nan}}", "\"[red]x\\n[/]\"", "[/:]: ["]


def _cli_cases(n: int, seed: int = 0) -> list[tuple[list[str], str]]:
    """(args, needle): a bad --set value, an unknown field, a bad file or a bad store URL."""
    rng = random.Random(seed)
    plain = [p for p in PATHS if ":" not in p and p != "search"]
    cases: list[tuple[list[str], str]] = []
    for i in range(n):
        kind = i % 4
        if kind == 3 and i % 8 == 3:  # a config file that is not UTF-8 YAML, or has an unknown field
            cases.append((["@file"], rng.choice(["utf16", "binary", "unknown"])))
            continue
        if kind == 3:
            cases.append((["@store", rng.choice(BAD_STORES)], "store"))
            continue
        path = rng.choice(plain)
        if kind == 2:
            path = f"{path}.{rng.choice(['x', '[b]', 'é'])}"
        cases.append((["--set", f"{path}={rng.choice(ALWAYS_BAD)}"], path.split(".")[0]))
    return cases


BAD_STORES = ["ftp://host/[x]", " ", "file://", "zip://x", "s3://u:p@b/[/:]", "hdfs://[red]h/x"]


def _run_cli_case(tmp_path: Path, i: int, args: list[str], needle: str) -> None:
    work = tmp_path / f"case{i}"
    work.mkdir()
    if args == ["@file"]:
        cfg = work / "cfg.yaml"
        text = EXAMPLE.read_text()
        data = {"utf16": text.encode("utf-16"), "binary": bytes(range(255, -1, -1)),
                "unknown": (text + "\nunknown_field: 1\n").encode()}[needle]
        cfg.write_bytes(data)
        args, needle = [str(cfg)], str(cfg)
    store = work / "store"
    if args[0] == "@store":
        args, store_arg = [], args[1]
    else:
        store_arg = str(store)
    before = _tree(work)
    assert_refused(memotune(work, *args, "--store", store_arg), store, needle)
    assert _tree(work) == before, _tree(work) - before


@pytest.mark.slow
def test_fuzz_cli_plan_refuses_bad_input_with_one_line(tmp_path):
    cases = _cli_cases(16)
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = [pool.submit(_run_cli_case, tmp_path, i, args, needle)
                   for i, (args, needle) in enumerate(cases)]
        for (args, _), fut in zip(cases, futures, strict=True):
            try:
                fut.result()
            except AssertionError as e:
                raise AssertionError(f"{args}: {e}") from None


@FUZZ
@given(st.sampled_from([p for p in PATHS if ":" not in p and p != "search"]),
       st.sampled_from(ALWAYS_BAD))
def test_fuzz_cli_in_process(tmp_path_factory, path, value):
    store = tmp_path_factory.mktemp("s") / "store"
    result = runner.invoke(app, ["plan", "--set", f"{path}={value}", "--store", str(store)])
    assert result.exit_code == 2, (path, value, result.output, result.exception)
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert not store.exists()
