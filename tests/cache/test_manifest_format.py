"""The manifest's on-disk format: exact bytes, so stores and content hashes survive refactors.

The literals below were written by the dataclass Manifest that the pydantic
model replaced; any change to the serialized text would strand existing
stores, so they are compared byte for byte.
"""

from __future__ import annotations

import json

import pytest
from storetools import key_of, make_dir

from cache.store import CorruptEntryError, FileRecord, Manifest

# Manifest(key="3f" * 32, stage="target_finetune", files=[config.json, empty.bin,
# tok/deep/vocab.txt], meta={...unicode, exponents, bool, null, nested...},
# compute_s=12.0, created=1767225600.123456).to_json(), from the pre-pydantic code.
GOLDEN = (
    '{\n "compute_s": 12.0,\n "created": 1767225600.123456,\n "files": [\n  {\n'
    '   "name": "config.json",\n'
    '   "sha256": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",\n'
    '   "size": 13\n  },\n  {\n   "name": "empty.bin",\n'
    '   "sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",\n'
    '   "size": 0\n  },\n  {\n   "name": "tok/deep/vocab.txt",\n'
    '   "sha256": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",\n'
    '   "size": 4\n  }\n ],\n "format": 1,\n'
    ' "key": "3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f3f",\n'
    ' "meta": {\n  "meta": {\n   "lrs": [\n    1e-05,\n    0.0003,\n    2\n   ],\n'
    '   "nested": {\n    "a": {},\n    "z": []\n   },\n'
    '   "note": "na\\u00efve \\u2014 \\u00fc"\n  },\n  "metrics": {\n   "acc": 0.8125,\n'
    '   "loss": 1.5e-07,\n   "none": null,\n   "ok": true,\n   "steps": 120\n  }\n },\n'
    ' "stage": "target_finetune"\n}'
)
# Manifest(key="0" * 64, stage="", files=[], meta={}, compute_s=0.0, created=0.5).to_json()
GOLDEN_EMPTY = (
    '{\n "compute_s": 0.0,\n "created": 0.5,\n "files": [],\n "format": 1,\n'
    ' "key": "0000000000000000000000000000000000000000000000000000000000000000",\n'
    ' "meta": {},\n "stage": ""\n}'
)


@pytest.mark.parametrize("text", [GOLDEN, GOLDEN_EMPTY])
def test_golden_manifest_round_trips_byte_for_byte(text):
    m = Manifest.from_json(text)
    assert m.to_json() == text
    assert Manifest.from_json(text.encode(), key=m.key).to_json() == text


def test_golden_manifest_fields():
    m = Manifest.from_json(GOLDEN, key="3f" * 32)
    assert (m.key, m.stage, m.format) == ("3f" * 32, "target_finetune", 1)
    assert [(f.name, f.size) for f in m.files] == [
        ("config.json", 13), ("empty.bin", 0), ("tok/deep/vocab.txt", 4)]
    assert m.files[1].sha256.startswith("e3b0c442")
    assert isinstance(m.compute_s, float) and m.compute_s == 12.0
    assert m.created == 1767225600.123456 and m.total_bytes == 17
    assert m.meta["meta"]["note"] == "naïve — ü" and m.meta["metrics"]["none"] is None


def test_integer_times_read_as_floats():
    """Older writers may have written compute_s as an int: read, then written as float."""
    doc = json.loads(GOLDEN_EMPTY)
    doc["compute_s"], doc["created"] = 3, 7
    m = Manifest.from_json(json.dumps(doc))
    assert (m.compute_s, m.created) == (3.0, 7.0)
    assert isinstance(m.compute_s, float) and isinstance(m.created, float)


def test_committed_manifest_is_to_json(tmp_path):
    from cache.store import ArtifactStore

    store = ArtifactStore.open(f"file://{tmp_path}/store", cache_dir=tmp_path / "c")
    key = key_of(5)
    m = store.commit(key, make_dir(tmp_path / "out", {"a/b.txt": b"hi", "c": b""}),
                     stage="s", meta={"metrics": {"x": 0.1}}, compute_s=2)
    text = (tmp_path / "store" / "objects" / key / "manifest.json").read_text()
    assert text == m.to_json()
    assert Manifest.from_json(text, key=key).to_json() == text
    assert store.manifest(key) == m
    assert m.files == [
        FileRecord(name="a/b.txt", size=2,
                   sha256="8f434346648f6b96df89dda901c5176b10a6d83961dd3c1ac88b59b2dc327aa4"),
        FileRecord(name="c", size=0,
                   sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
    ]


def _bad(**changes) -> str:
    doc = json.loads(GOLDEN)
    for path, value in changes.items():
        node = doc
        *parents, last = path.split("__")
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node[p]
        if value is _DROP:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return json.dumps(doc)


_DROP = object()
KEY = "3f" * 32

# Every rule of the format: (damaged manifest text, a word the message must hold).
BAD = {
    "not json": ("{oops", "not JSON"),
    "not an object": ("[]", "object"),
    "missing field": (_bad(stage=_DROP), "stage"),
    "extra field": (_bad(extra=1), "extra"),
    "missing format": (_bad(format=_DROP), "format"),
    "format 2": (_bad(format=2), "format"),
    "format float": (_bad(format=1.0), "format"),  # read by the old checks; never written
    "format true": (_bad(format=True), "format"),
    "key not hex": (_bad(key="X" * 64), "key"),
    "stage not str": (_bad(stage=5), "stage"),
    "meta not object": (_bad(meta=[]), "meta"),
    "compute_s str": (_bad(compute_s="1"), "compute_s"),
    "compute_s bool": (_bad(compute_s=True), "compute_s"),
    "created nan": (GOLDEN.replace("1767225600.123456", "NaN"), "created"),
    "created inf": (GOLDEN.replace("1767225600.123456", "Infinity"), "created"),
    "files not list": (_bad(files={}), "files"),
    "file not object": (_bad(files__0="x"), "files"),
    "file extra field": (_bad(files__0__mode=1), "files"),
    "file missing size": (_bad(files__0__size=_DROP), "size"),
    "name ../": (_bad(files__0__name="../x"), "../x"),
    "name deep ../": (_bad(files__0__name="a/../../x"), "a/../../x"),
    "name absolute": (_bad(files__0__name="/etc/passwd"), "/etc/passwd"),
    "name backslash": (_bad(files__0__name="a\\b"), "name"),
    "name empty": (_bad(files__0__name=""), "name"),
    "name dot": (_bad(files__0__name="./a"), "name"),
    "name double slash": (_bad(files__0__name="a//b"), "name"),
    "name control char": (_bad(files__0__name="a\nb"), "name"),
    "name not str": (_bad(files__0__name=3), "name"),
    "size negative": (_bad(files__0__size=-1), "size"),
    "size float": (_bad(files__0__size=13.0), "size"),
    "size bool": (_bad(files__0__size=True), "size"),
    "sha256 upper": (_bad(files__0__sha256="A" * 64), "sha256"),
    "sha256 short": (_bad(files__0__sha256="a" * 63), "sha256"),
    "duplicate names": (_bad(files__1__name="config.json"), "duplicate"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_every_rule_still_holds(case):
    text, word = BAD[case]
    with pytest.raises(CorruptEntryError) as ei:
        Manifest.from_json(text, key=KEY)
    assert ei.value.key == KEY and ei.value.file == "manifest.json"
    assert word in str(ei.value)  # names the bad field (or the bad value)
    assert str(ei.value).startswith(f"corrupt manifest objects/{KEY}/manifest.json: ")


def test_manifest_of_another_key_is_corrupt():
    with pytest.raises(CorruptEntryError, match=f"manifest is for key {KEY}"):
        Manifest.from_json(GOLDEN, key=key_of(1))
