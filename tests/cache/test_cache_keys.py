"""Content keys: equal meaning -> equal key, any real change -> a different key."""

from __future__ import annotations

import importlib.util
import math
import os
import sys
import time
from pathlib import Path

import fsspec
import pytest
import yaml

from cache.keys import (
    DataSourceError,
    canonical_json,
    canonicalize,
    check_key,
    fingerprint_uris,
    is_key,
    source_hash,
    stage_key,
)

UP = "a" * 64
BASE = dict(
    stage="finetune",
    version="1",
    code_hash="c0de",
    params={"lr": 1e-5, "epochs": 3, "sched": {"kind": "cosine", "warmup": 0.1}},
    upstream=UP,
    data_fingerprint=None,
)


def test_key_shape():
    key = stage_key(**BASE)
    assert is_key(key) and check_key(key) == key


def test_dict_order_and_int_float_do_not_matter():
    a = stage_key(
        **{
            **BASE,
            "params": {"epochs": 3, "lr": 0.00001, "sched": {"warmup": 0.1, "kind": "cosine"}},
        }
    )
    b = stage_key(
        **{
            **BASE,
            "params": {"sched": {"kind": "cosine", "warmup": 0.1}, "lr": 1e-5, "epochs": 3.0},
        }
    )
    assert a == b == stage_key(**BASE)
    assert canonical_json({"b": 1.0, "a": (1, 2.0)}) == '{"a":[1,2],"b":1}'


def test_yaml_formatting_is_irrelevant():
    doc1 = yaml.safe_load("lr: 1.0e-5\nepochs: 3\nsched: {kind: cosine, warmup: 0.1}\n")
    doc2 = yaml.safe_load(
        "# comment\nsched:\n  warmup: 0.100\n  kind: 'cosine'\nepochs: 3.0\nlr: 0.00001\n"
    )
    assert stage_key(**{**BASE, "params": doc1}) == stage_key(**{**BASE, "params": doc2})


@pytest.mark.parametrize(
    "change",
    [
        {"stage": "evaluate"},
        {"version": "2"},
        {"code_hash": "c0de2"},
        {"params": {**BASE["params"], "lr": 2e-5}},
        {"params": {**BASE["params"], "extra": None}},
        {"params": {**BASE["params"], "sched": {"kind": "cosine", "warmup": 0.2}}},
        {"upstream": "b" * 64},
        {"upstream": None},
        {"data_fingerprint": "f" * 64},
    ],
    ids=lambda c: next(iter(c)),
)
def test_every_field_changes_the_key(change):
    assert stage_key(**{**BASE, **change}) != stage_key(**BASE)


def test_bool_and_int_are_distinct():
    assert canonicalize(True) is True and canonicalize(1) == 1
    assert stage_key(**{**BASE, "params": {"x": True}}) != stage_key(**{**BASE, "params": {"x": 1}})
    assert stage_key(**{**BASE, "params": {"x": 1.0}}) == stage_key(**{**BASE, "params": {"x": 1}})


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_rejected_with_path(bad):
    with pytest.raises(ValueError, match=r"\$\.sched\.warmup"):
        canonicalize({"sched": {"warmup": bad}})


def test_non_plain_data_rejected_with_path():
    with pytest.raises(TypeError, match=r"\$\.layers\[1\]"):
        canonicalize({"layers": [1, object()]})
    with pytest.raises(TypeError):
        canonicalize({1: "int keys would collide with '1'"})
    with pytest.raises(TypeError):
        canonicalize({"s": {1, 2}})


@pytest.mark.parametrize(
    "bad",
    ["", "A" * 64, "a" * 63, "a" * 65, "g" * 64, "../" + "a" * 61, None, 12, "a" * 63 + "\n"],
)
def test_bad_keys_rejected(bad):
    assert not is_key(bad)
    with pytest.raises(ValueError):
        check_key(bad)


def test_stage_key_rejects_bad_upstream():
    with pytest.raises(ValueError):
        stage_key(**{**BASE, "upstream": "not-a-key"})


def _import_file(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    return module


def test_source_hash_follows_code(tmp_path):
    (tmp_path / "mt_stage_v1.py").write_text("def run(x):\n    return x + 1\n")
    (tmp_path / "mt_stage_v2.py").write_text("def run(x):\n    return x + 2\n")
    (tmp_path / "mt_stage_v1b.py").write_text("def run(x):\n    return x + 1\n")
    v1, v2, v1b = (_import_file(tmp_path / f"mt_stage_{n}.py") for n in ("v1", "v2", "v1b"))
    try:
        assert source_hash(v1) != source_hash(v2)
        assert source_hash(v1.run) != source_hash(v2.run)
        assert source_hash(v1) == source_hash(v1b)  # content, not module name
        assert is_key(source_hash(v1, v1.run))
    finally:
        for n in ("v1", "v2", "v1b"):
            sys.modules.pop(f"mt_stage_{n}", None)
    with pytest.raises(ValueError):
        source_hash(len)  # builtin: no source


def test_fingerprint_content_not_location(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    (a / "train.jsonl").write_text('{"x": 1}\n')
    (b / "train.jsonl").write_text('{"x": 1}\n')
    fp = fingerprint_uris([str(a / "train.jsonl")])
    assert is_key(fp)
    assert fp == fingerprint_uris([f"file://{b / 'train.jsonl'}"])
    (b / "train.jsonl").write_text('{"x": 2}\n')
    assert fp != fingerprint_uris([str(b / "train.jsonl")])


def test_fingerprint_glob_dir_and_memory(tmp_path):
    d = tmp_path / "data"
    (d / "sub").mkdir(parents=True)
    (d / "p1.txt").write_text("one")
    (d / "sub" / "p2.txt").write_text("two")
    by_dir = fingerprint_uris([str(d)])
    assert by_dir == fingerprint_uris([str(d)])
    glob_fp = fingerprint_uris([str(d / "*.txt")])
    (d / "p3.txt").write_text("three")
    assert fingerprint_uris([str(d / "*.txt")]) != glob_fp
    assert fingerprint_uris([str(d)]) != by_dir
    fs = fsspec.filesystem("memory")
    fs.pipe_file("/fp-test/x.txt", b"one")
    assert fingerprint_uris(["memory://fp-test/x.txt"]) == fingerprint_uris([str(d / "p1.txt")])
    # order of sources matters (train vs eval roles)
    assert fingerprint_uris([str(d / "p1.txt"), str(d / "p3.txt")]) != fingerprint_uris(
        [str(d / "p3.txt"), str(d / "p1.txt")]
    )


def test_fingerprint_big_files_use_size_and_mtime(tmp_path):
    f = tmp_path / "big.bin"
    f.write_bytes(b"x" * 100)
    fp = fingerprint_uris([str(f)], hash_limit=10)
    assert fp == fingerprint_uris([str(f)], hash_limit=10)
    later = time.time() + 100
    os.utime(f, (later, later))
    assert fingerprint_uris([str(f)], hash_limit=10) != fp


def test_fingerprint_missing(tmp_path):
    missing = str(tmp_path / "nope.jsonl")
    with pytest.raises(DataSourceError) as ei:
        fingerprint_uris([missing])
    assert isinstance(ei.value, FileNotFoundError)
    assert str(ei.value) == f"data file not found: {missing}"
    with pytest.raises(DataSourceError):
        fingerprint_uris([str(tmp_path / "*.none")])


def test_fingerprint_on_s3(s3_store_url, tmp_path):
    local = tmp_path / "train.jsonl"
    local.write_bytes(b'{"x": 1}\n')
    remote = s3_store_url + "/data/train.jsonl"
    with fsspec.open(remote, "wb") as f:
        f.write(local.read_bytes())
    assert fingerprint_uris([remote]) == fingerprint_uris([str(local)])
    assert fingerprint_uris([remote], hash_limit=1) != fingerprint_uris([remote])  # ETag mode
    with pytest.raises(DataSourceError, match="data file not found: s3://"):
        fingerprint_uris([s3_store_url + "/data/missing.jsonl"])


def test_a_module_named_hashes_as_its_imported_source(tmp_path, monkeypatch):
    """Stages name their code modules (read from their files, never imported to plan):
    the hash is the one inspect gives the imported module, trailing newline or not."""
    (tmp_path / "mt_named_a.py").write_text("def run(x):\n    return x + 1\n")
    (tmp_path / "mt_named_b.py").write_text("def run(x):\n    return x + 1")  # no final newline
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        for name in ("mt_named_a", "mt_named_b"):
            assert source_hash(name) == source_hash(importlib.import_module(name))
        assert source_hash("mt_named_a") == source_hash("mt_named_b")
    finally:
        for name in ("mt_named_a", "mt_named_b"):
            sys.modules.pop(name, None)
    with pytest.raises(ValueError, match="mt_no_such_module"):
        source_hash("mt_no_such_module")


def test_the_key_rule_is_pinned(tmp_path, monkeypatch):
    """The chain of keys for fixed code, params and data. Every store's entries are found
    by these keys: a refactor that changes the rule (canonical JSON, chaining, how code,
    params or data enter) would orphan every existing entry, so it must fail here."""
    from cache.keys import KeyMaterial, chain_keys

    (tmp_path / "mt_pinned_stage.py").write_text("def run(params):\n    return params\n")
    data = tmp_path / "d" / "train.csv"
    data.parent.mkdir()
    data.write_text("text,label\ngood,1\nbad,0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = KeyMaterial(stage="prep", version="1", code=("mt_pinned_stage",),
                        params={"files": [str(data)], "seed": 0},
                        inputs={"target.train": [str(data)]})
    second = KeyMaterial(stage="train", version="2", code=("mt_pinned_stage",),
                         params={"lr": 1e-3, "epochs": 3, "optimizer": {"mode": "adamw"}})
    keys = chain_keys([first, second])
    # the values the rule gave before it moved into chain_keys (computed with the
    # flows/plan.py of commit b8060e7 from the same code, params and file)
    assert keys == ["15ec5bc2dd293f485850c4ba10389565d38f3ab4631837be9e473676b56811e3",
                    "0939ebe16b339cacea5b2cba08bbec0c856150fc5f6ff698cdb7d0e5ae845950"]
    sys.modules.pop("mt_pinned_stage", None)
