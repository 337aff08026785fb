"""data_prep's inputs as users bring them: real files the tests write themselves.

Every format (comma/tab/semicolon csv, tsv, jsonl, a JSON array, parquet) is read
to the same rows; string and int labels map to ids in a stable order and the
label set is reported; n_train is a seeded (optionally stratified) sample;
malformed files are refused up front, before anything runs or is written, with
one line naming the file and the problem (through the real CLI for some);
max_length: auto, the tokenizer's vocabulary from all training text, and the
intermediate task's sentence bounds and disjoint generator, on the stage itself.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from flows.config import ConfigError, load_config
from flows.validation import check_sources
from stages import builtin_world, data_prep
from stages.base import StageContext
from stages.data_prep import (
    DataFileError,
    check_split,
    read_split,
    read_table,
    sample_indices,
)
from stages.params import TargetData

MEMOTUNE = str(Path(sys.executable).parent / "memotune")
WORDS = "the a movie film plot actor scene story music ending was is very quite rather not".split()


# ---------------------------------------------------------------- writing files


def sentences(n: int, seed: int = 0, words: int = 6) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=words)) + f", take {i}" for i in range(n)]


def labelled(n: int, labels: tuple[Any, ...] = ("neg", "pos"), sorted_by_class: bool = False,
             seed: int = 0) -> list[dict[str, Any]]:
    texts = sentences(n, seed)
    rows = [{"text": t, "label": labels[i % len(labels)]} for i, t in enumerate(texts)]
    return sorted(rows, key=lambda r: str(r["label"])) if sorted_by_class else rows


def write(path: Path, rows: list[dict[str, Any]], delimiter: str = ",",
          columns: tuple[str, ...] = ("text", "label")) -> Path:
    """rows as csv (any delimiter), .jsonl, .json (an array) or .parquet, by suffix."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(rows), path)
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif path.suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        quote = delimiter != "\t"

        def cell(v: Any) -> str:
            v = str(v)
            return '"' + v.replace('"', '""') + '"' if quote and (delimiter in v or '"' in v) else v

        lines = [delimiter.join(columns)] + [delimiter.join(cell(r[c]) for c in columns) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    return path


def target(train: Path, validation: Path, **extra: Any) -> dict[str, Any]:
    return {"source": extra.pop("source", "csv"),
            "data_files": {"train": str(train), "validation": str(validation)}, **extra}


def config(tmp_path: Path, target_doc: dict[str, Any], **data_prep_extra: Any):
    """A small pipeline config on these files (intermediate task off unless given)."""
    doc = {"device": "cpu", "data_prep": {"target": target_doc, "guidance_min": 4,
                                          "intermediate": {"task": "none"}, **data_prep_extra}}
    return load_config(doc=doc)


def prepare(tmp_path: Path, cfg, name: str = "out") -> tuple[Path, dict[str, Any], Any]:
    """Run the data_prep stage function into a fresh work folder: (folder, info.json, result)."""
    workdir = tmp_path / name
    workdir.mkdir()
    ctx = StageContext(device="cpu", logger=logging.getLogger("memotune.test"))
    result = data_prep.run(cfg.stage_params("data_prep"), {}, workdir, ctx)
    return workdir, json.loads((workdir / "info.json").read_text()), result


def refused(cfg_or_overrides, *needles: str) -> str:
    """check_sources (the CLI's step before keys and store) refuses with one line."""
    with pytest.raises(ConfigError) as info:
        check_sources(cfg_or_overrides)
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert needle in msg, (needle, msg)
    return msg


# ---------------------------------------------------------------- every format reads the same rows


FORMATS = {
    "comma csv": ("train.csv", {"delimiter": None}, {}),
    "tab, recognized by .tsv": ("train.tsv", {"delimiter": "\t"}, {}),
    "source tsv": ("train.txt", {"delimiter": "\t"}, {"source": "tsv"}),
    "semicolon csv": ("train.csv", {"delimiter": ";"}, {"delimiter": ";"}),
    "pipe csv, delimiter by name": ("train.csv", {"delimiter": "|"}, {"delimiter": "pipe"}),
    "tab by name on a .csv": ("train.csv", {"delimiter": "\t"}, {"delimiter": "tab"}),
    "jsonl": ("train.jsonl", {}, {"source": "json"}),
    "jsonl as source jsonl": ("train.jsonl", {}, {"source": "jsonl"}),
    "json array": ("train.json", {}, {"source": "json"}),
    "parquet": ("train.parquet", {}, {"source": "parquet"}),
}


@pytest.mark.parametrize("case", list(FORMATS))
def test_every_format_reads_the_same_rows(tmp_path, case):
    name, write_opts, source_opts = FORMATS[case]
    rows = labelled(30)
    rows[3]["text"] = 'a "quoted" word, with a comma; and a semicolon | and a pipe'
    delimiter = write_opts.get("delimiter") or ","
    if delimiter in rows[3]["text"] and delimiter == "\t":
        rows[3]["text"] = rows[3]["text"].replace("\t", " ")
    train = write(tmp_path / name, rows, delimiter=delimiter)
    val = write(tmp_path / ("val" + Path(name).suffix), labelled(10, seed=1), delimiter=delimiter)
    doc = target(train, val, **source_opts)
    cfg = config(tmp_path, doc)
    check_sources(cfg)  # what `memotune plan` runs before keys and store
    t = cfg.data_prep.target
    read = read_split(t, "train", ["text", "label"])
    assert [(r["text"], str(r["label"])) for r in read] == [(r["text"], r["label"]) for r in rows]


def test_source_tsv_and_delimiter_spellings_load():
    assert TargetData(source="tsv", data_files={"train": "a", "validation": "b"}).delimiter is None
    for spelled, meant in (("tab", "\t"), ("\\t", "\t"), ("\t", "\t"), (";", ";"), ("pipe", "|")):
        assert TargetData(source="csv", delimiter=spelled).delimiter == meant
    with pytest.raises(ValueError, match="csv/tsv files only"):
        TargetData(source="json", delimiter=",")
    with pytest.raises(ValueError, match="one character"):
        TargetData(source="csv", delimiter=";;")
    with pytest.raises(ValueError, match="use source csv"):
        TargetData(source="tsv", delimiter=";")


def test_a_tab_delimiter_in_a_yaml_config_file_is_accepted(tmp_path):
    train = write(tmp_path / "d" / "train.txt", labelled(20), delimiter="\t")
    val = write(tmp_path / "d" / "dev.txt", labelled(6, seed=1), delimiter="\t")
    for spelled in ('"\\t"', "'\\t'", "tab"):
        path = tmp_path / "cfg.yaml"
        path.write_text("data_prep:\n  intermediate: {task: none}\n  target:\n    source: csv\n"
                        f"    delimiter: {spelled}\n"
                        "    data_files: {train: d/train.txt, validation: d/dev.txt}\n")
        cfg = load_config(path)
        assert cfg.data_prep.target.delimiter == "\t"
        check_sources(cfg)
    assert (train.exists(), val.exists()) == (True, True)


# ---------------------------------------------------------------- labels


def test_string_labels_map_to_sorted_ids_and_the_label_set_is_reported(tmp_path):
    labels = ("positive", "negative", "neutral")
    rows = labelled(60, labels=labels)
    train = write(tmp_path / "train.tsv", rows, delimiter="\t")
    val = write(tmp_path / "dev.tsv", labelled(15, labels=labels, seed=1), delimiter="\t")
    cfg = config(tmp_path, target(train, val), max_length=16)
    workdir, info, result = prepare(tmp_path, cfg)
    assert info["label_names"] == ["negative", "neutral", "positive"] and info["num_labels"] == 3
    counts = info["labels"]
    assert set(counts) == {"train", "validation", "guidance"}
    assert counts["validation"] == {"negative": 5, "neutral": 5, "positive": 5}
    assert sum(counts["train"].values()) + sum(counts["guidance"].values()) == 60
    assert result.meta["labels"] == counts and result.metrics["num_labels"] == 3.0
    # the stored ids follow the sorted names: validation rows are in file order
    ids = read_table(workdir / "target_validation.parquet")["labels"]
    names = info["label_names"]
    assert [names[i] for i in ids] == [labels[i % 3] for i in range(15)]


def test_int_labels_sort_as_numbers_and_text_ints_are_ints(tmp_path):
    train = write(tmp_path / "train.csv", labelled(40, labels=(10, 2)))  # "10", "2" as text
    assert data_prep.class_labels({"t": [{"l": "10"}, {"l": " 2"}], "v": [{"l": 2}]}, "l") == \
        {"t": [10, 2], "v": [2]}
    mixed = data_prep.class_labels({"t": [{"l": "b"}, {"l": 1}]}, "l")
    assert mixed == {"t": ["b", "1"]}
    with pytest.raises(ValueError, match="row 2 has no label"):
        data_prep.class_labels({"train": [{"l": "a"}, {"l": ""}]}, "l")
    with pytest.raises(ValueError, match="not a class"):
        data_prep.class_labels({"train": [{"l": 0.5}]}, "l")
    cfg = config(tmp_path, target(train, write(tmp_path / "dev.csv", labelled(8, labels=(2, 10)))),
                 max_length=16)
    _, info, _ = prepare(tmp_path, cfg)
    assert info["label_names"] == ["2", "10"]
    parquet = write(tmp_path / "train.parquet", labelled(40, labels=(10, 2)))  # int64 column
    _, info, _ = prepare(tmp_path, config(tmp_path, target(parquet, parquet, source="parquet"),
                                          max_length=16), "parquet")
    assert info["label_names"] == ["2", "10"]
    assert info["labels"]["validation"] == {"2": 20, "10": 20}


# ---------------------------------------------------------------- sampling


def test_n_train_is_a_seeded_sample_of_a_file_sorted_by_class(tmp_path):
    rows = labelled(200, sorted_by_class=True)  # 100 neg, then 100 pos
    train = write(tmp_path / "train.csv", rows)
    val = write(tmp_path / "dev.csv", labelled(20, seed=1))
    doc = target(train, val, n_train=40)
    a = prepare(tmp_path, config(tmp_path, doc, max_length=16), "a")
    b = prepare(tmp_path, config(tmp_path, doc, max_length=16), "b")
    for info in (a[1], b[1]):
        both = {k: info["labels"]["train"][k] + info["labels"]["guidance"][k] for k in ("neg", "pos")}
        assert sum(both.values()) == 40 and min(both.values()) >= 10, both
        assert info["sampling"]["train"] == {"rows": 200, "used": 40}
    for name in ("target_train.parquet", "guidance.parquet"):  # deterministic: the same rows
        ta, tb = read_table(a[0] / name), read_table(b[0] / name)
        assert all(np.array_equal(ta[k], tb[k]) for k in ta)
    other = prepare(tmp_path, config(tmp_path, {**doc, "sample_seed": 1}, max_length=16), "c")
    assert not np.array_equal(read_table(other[0] / "target_train.parquet")["input_ids"],
                              read_table(a[0] / "target_train.parquet")["input_ids"])


def test_stratified_samples_keep_the_label_proportions(tmp_path):
    labels = ["a"] * 150 + ["b"] * 45 + ["c"] * 5
    picked = sample_indices(labels, 40, "train:0", stratify=True)
    assert sorted(labels[i] for i in picked) == ["a"] * 30 + ["b"] * 9 + ["c"] * 1
    assert picked == sample_indices(labels, 40, "train:0", stratify=True)
    assert picked != sample_indices(labels, 40, "train:1", stratify=True)
    assert len(set(picked)) == 40
    assert sample_indices(labels, None, "x", True) == list(range(200))
    assert sample_indices(labels, 500, "x", False) == list(range(200))
    # through the stage, n_validation too
    rows = [{"text": t, "label": lab} for t, lab in zip(sentences(200), labels, strict=True)]
    train = write(tmp_path / "train.jsonl", sorted(rows, key=lambda r: r["label"]))
    val = write(tmp_path / "dev.jsonl", rows)
    doc = target(train, val, source="json", n_train=40, n_validation=20, stratify=True)
    _, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length=16))
    train_counts = {k: info["labels"]["train"][k] + info["labels"]["guidance"][k] for k in "abc"}
    assert train_counts == {"a": 30, "b": 9, "c": 1}
    assert info["labels"]["validation"] == {"a": 15, "b": 5, "c": 0}  # ties: label order


# ---------------------------------------------------------------- tokenizer and max_length


def test_vocabulary_comes_from_all_training_text_with_size_and_frequency_settings(tmp_path):
    from stages.data_prep import load_tokenizer

    rows = labelled(100)
    rows[97]["text"] += " zanzibar"  # only in a row the n_train sample leaves out (checked below)
    rows[98]["text"] += " quixotic quixotic"
    train = write(tmp_path / "train.csv", rows)
    val = write(tmp_path / "dev.csv", labelled(10, seed=1) + [{"text": "zanzibar", "label": "neg"}])
    doc = target(train, val, n_train=10)
    assert not {97, 98} & set(sample_indices(["x"] * 100, 10, "train:0", False))
    workdir, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length=16), "all")
    vocab = load_tokenizer(workdir / "tokenizer").get_vocab()
    assert {"zanzibar", "quixotic"} <= set(vocab)
    assert info["vocab_size"] == len(vocab)
    assert info["unk_fraction"]["target_validation"] == 0.0
    workdir, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length=16, min_frequency=2), "f2")
    vocab = load_tokenizer(workdir / "tokenizer").get_vocab()
    assert "quixotic" in vocab and "zanzibar" not in vocab
    assert info["unk_fraction"]["target_validation"] > 0
    workdir, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length=16, vocab_size=20), "v20")
    assert info["vocab_size"] == 20


def test_max_length_auto_is_a_percentile_of_tokenized_lengths_clamped(tmp_path):
    # the builtin tokenizer is word level: a text of w words is w + 2 tokens ([CLS], [SEP])
    rows = [{"text": " ".join(["word"] * (40 if i % 25 else 100)), "label": i % 2} for i in range(200)]
    train = write(tmp_path / "train.csv", rows)
    val = write(tmp_path / "dev.csv", rows[:20])
    doc = target(train, val)
    workdir, info, result = prepare(tmp_path, config(tmp_path, doc), "p95")  # auto is the default
    assert info["max_length"] == 42 and result.metrics["max_length"] == 42.0
    assert info["lengths"]["max_length"] == "auto" and info["lengths"]["percentile"] == 95
    assert info["lengths"]["truncated"]["target_train"] == pytest.approx(0.04)
    assert info["lengths"]["at_percentile"]["target_train"] == 42
    assert read_table(workdir / "target_train.parquet")["input_ids"].shape[1] == 42
    _, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length_percentile=100), "p100")
    assert info["max_length"] == 102 and info["lengths"]["truncated"]["target_train"] == 0
    _, info, _ = prepare(tmp_path, config(tmp_path, doc, max_length=20), "fixed")
    assert info["max_length"] == 20 and info["lengths"]["max_length"] == 20
    short = write(tmp_path / "short.csv", [{"text": "hi", "label": i % 2} for i in range(20)])
    _, info, _ = prepare(tmp_path, config(tmp_path, target(short, short)), "short")
    assert info["max_length"] == 32  # the floor: short texts keep the former default length
    assert info["lengths"]["at_percentile"]["target_train"] == 3
    long = write(tmp_path / "long.csv",
                 [{"text": " ".join(["w"] * 600), "label": i % 2} for i in range(12)])
    _, info, _ = prepare(tmp_path, config(tmp_path, target(long, long)), "long")
    assert info["max_length"] == 512


def test_auto_max_length_takes_the_largest_percentile():
    from stages.data_prep import auto_max_length

    assert auto_max_length([np.array([35, 36, 37, 90]), np.array([40])], 50) == 40
    assert auto_max_length([np.array([35, 36, 37, 90])], 50) == 37  # an observed length
    assert auto_max_length([np.array([1000])], 95) == 512
    assert auto_max_length([np.array([5, 6])], 95) == 32
    assert auto_max_length([np.zeros(0)], 95) == 32

    class Short:
        model_max_length = 128

    assert auto_max_length([np.array([1000])], 95, Short()) == 128


# ---------------------------------------------------------------- the intermediate task from a corpus


def test_intermediate_bounds_adapt_and_the_generator_never_sees_what_it_fakes(tmp_path, monkeypatch,
                                                                             caplog):
    rng = np.random.default_rng(0)
    paragraphs = [{"context": " ".join(" ".join(rng.choice(WORDS, size=int(rng.integers(9, 15))))
                                       + "." for _ in range(4))} for _ in range(40)]
    corpus = write(tmp_path / "corpus.jsonl", paragraphs)
    train = write(tmp_path / "train.csv", labelled(40))
    fitted: list[list[str]] = []
    faked: list[list[str]] = []
    real_gen, real_examples = builtin_world.NgramGenerator, builtin_world.realfake_examples

    class Recording(real_gen):
        def __init__(self, sentences: list[str], order: int = 3):
            fitted.append(list(sentences))
            super().__init__(sentences, order)

    def recording_examples(sentences, *args, **kwargs):
        faked.append(list(sentences))
        return real_examples(sentences, *args, **kwargs)

    monkeypatch.setattr(builtin_world, "NgramGenerator", Recording)
    monkeypatch.setattr(builtin_world, "realfake_examples", recording_examples)
    intermediate = {"task": "realfake", "source": "json", "text_field": "context",
                    "data_files": {"train": str(corpus)}, "n_examples": 60, "min_words": 20}
    doc = {"device": "cpu", "data_prep": {"target": target(train, train), "guidance_min": 4,
                                          "intermediate": intermediate, "max_length": 24}}
    cfg = load_config(doc=doc)
    check_sources(cfg)
    with caplog.at_level(logging.WARNING, logger="memotune.test"):
        _, info, _ = prepare(tmp_path, cfg)
    report = info["intermediate"]
    assert report["sentences"] == 160 and report["qualifying"] == 0
    assert 8 <= report["min_words_used"] <= 14 and report["qualifying_used"] >= 60
    assert report["selected"] == 60 and report["examples"] == info["counts"]["intermediate_train"]
    assert report["generator_sentences"] == 100 and len(fitted[0]) == 100
    assert not set(fitted[0]) & set(faked[0])  # disjoint: no faked sentence is fitted on
    assert any("only 0 of 160 sentences" in r.getMessage() and "min_words lowered" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]
    # the floor holds: min_words_floor 14 leaves too few; fewer examples
    intermediate.update(min_words_floor=14)
    _, info, _ = prepare(tmp_path, load_config(doc=doc), "floor")
    assert info["intermediate"]["min_words_used"] == 14
    assert info["intermediate"]["selected"] < 60


def test_builtin_generator_backs_off_on_unseen_contexts():
    gen = builtin_world.NgramGenerator(["the cat sat on the mat", "a dog ran in the park"])
    import random

    ending = gen.continue_text("zebras quietly", 3, random.Random(0))
    assert len(ending.split()) == 3  # the old chain gave "" for a context it never saw


# ---------------------------------------------------------------- malformed files, refused up front


def _csv_cfg(tmp_path: Path, train: Path, val: Path | None = None, **extra: Any):
    val = val or write(tmp_path / "ok_dev.csv", labelled(6, seed=3))
    return config(tmp_path, target(train, val, **extra))


def test_wrong_delimiter_says_which_to_set(tmp_path):
    tab = write(tmp_path / "train.csv", labelled(20), delimiter="\t")  # a tab file named .csv
    msg = refused(_csv_cfg(tmp_path, tab), "data_prep.target.data_files.train", str(tab),
                  "one column", "tab-separated", "data_prep.target.delimiter: tab")
    assert msg.count(str(tab)) == 1
    semi = write(tmp_path / "semi.csv", labelled(20), delimiter=";")
    refused(_csv_cfg(tmp_path, semi), str(semi), "semicolon-separated",
            "data_prep.target.delimiter: ';'")
    comma = write(tmp_path / "comma.tsv", labelled(20))  # a comma file named .tsv
    refused(_csv_cfg(tmp_path, comma), str(comma), "when split on tabs",
            "comma-separated", "delimiter: ','")
    refused(_csv_cfg(tmp_path, semi, delimiter="|"), "semicolon-separated")


def test_missing_columns_name_the_columns_present(tmp_path):
    bad = write(tmp_path / "train.csv", [{"sentence": "a b", "y": 1}, {"sentence": "c", "y": 0}],
                columns=("sentence", "y"))
    refused(_csv_cfg(tmp_path, bad), str(bad), "no column 'text', 'label'",
            "columns: 'sentence', 'y'")
    jsonl = write(tmp_path / "train.jsonl", [{"text": "a", "stars": 1}, {"text": "b", "stars": 2}])
    refused(config(tmp_path, target(jsonl, jsonl, source="json")), str(jsonl),
            "no field 'label'", "'stars'")
    parquet = write(tmp_path / "train.parquet", [{"review": "a", "label": 1}])
    refused(config(tmp_path, target(parquet, parquet, source="parquet")), str(parquet),
            "no column 'text'", "'review'")
    # the intermediate corpus needs its text field
    cfg = load_config(doc={"data_prep": {"intermediate": {
        "source": "json", "text_field": "context", "data_files": {"train": str(jsonl)}}}})
    refused(cfg, "data_prep.intermediate.data_files.train", "no field 'context'")


@pytest.mark.parametrize("content, needle", [
    (b"", "is empty"),
    (b"\n\n  \n", "is empty"),
    (b"text,label\n", "has a header but no rows"),
    (b"text,label\nhello,1\nhello,1,2\n", "cannot be read as comma-separated csv"),
])
def test_empty_header_only_and_broken_csv_files_are_refused(tmp_path, content, needle):
    bad = tmp_path / "train.csv"
    bad.write_bytes(content)
    refused(_csv_cfg(tmp_path, bad), "data_prep.target.data_files.train", str(bad), needle)


def test_empty_json_and_parquet_files_are_refused(tmp_path):
    for name, source, content, needle in (
            ("t.jsonl", "json", b"", "is empty"),
            ("t.json", "json", b"[]", "has no records"),
            ("t.jsonl", "json", b'{"text": "a", "label": 1}\nnot json\n', "line 2 is not JSON"),
            ("t.parquet", "parquet", b"", "is empty"),
            ("t.parquet", "parquet", b"text,label\na,1\n", "cannot be read as parquet")):
        bad = tmp_path / name
        bad.write_bytes(content)
        refused(config(tmp_path, target(bad, bad, source=source)), str(bad), needle)
    empty = tmp_path / "e.parquet"
    pq.write_table(pa.table({"text": pa.array([], pa.string()), "label": pa.array([], pa.int64())}),
                   empty)
    refused(config(tmp_path, target(empty, empty, source="parquet")), "has no rows")


def test_a_label_column_with_one_class_is_refused(tmp_path):
    one = write(tmp_path / "train.csv", labelled(20, labels=("pos",)))
    refused(_csv_cfg(tmp_path, one), str(one), "label column 'label' has one class (pos)")
    parquet = write(tmp_path / "train.parquet", labelled(20, labels=(1,)))
    refused(config(tmp_path, target(parquet, parquet, source="parquet")), "one class (1)")
    # a big file (beyond the head read) with one class: found by the bounded scan
    big = write(tmp_path / "big.csv", labelled(3000, labels=("neg",)))
    assert big.stat().st_size > 8 * data_prep.PEEK_BYTES
    refused(_csv_cfg(tmp_path, big), str(big), "one class (neg)")
    # one class only in the validation split is accepted; one class in the rows a
    # sample keeps is the stage's error
    check_sources(_csv_cfg(tmp_path, write(tmp_path / "t2.csv", labelled(20)), one))


def test_a_big_file_sorted_by_class_passes_from_its_head_and_tail(tmp_path, monkeypatch):
    big = write(tmp_path / "big.csv", labelled(3000, sorted_by_class=True))
    assert big.stat().st_size > 8 * data_prep.PEEK_BYTES

    def no_scan(*args: Any) -> Any:
        raise AssertionError("read the whole file")

    monkeypatch.setattr(data_prep, "_scan_labels", no_scan)
    check_sources(_csv_cfg(tmp_path, big))
    jsonl = write(tmp_path / "big.jsonl", labelled(3000, sorted_by_class=True))
    check_sources(config(tmp_path, target(jsonl, jsonl, source="json")))


def test_check_split_reads_only_a_few_kb_of_a_big_file(tmp_path, monkeypatch):
    from fsspec.implementations.local import LocalFileOpener

    big = write(tmp_path / "big.csv", labelled(20000, sorted_by_class=True))
    read: list[int] = []
    real_read = LocalFileOpener.read

    def counting(self: Any, *args: Any) -> bytes:
        data = real_read(self, *args)
        read.append(len(data))
        return data

    monkeypatch.setattr(LocalFileOpener, "read", counting)
    check_split(TargetData(source="csv", data_files={"train": str(big)}), "train",
                ["text", "label"], "label")
    assert big.stat().st_size > 100 * data_prep.PEEK_BYTES
    assert 0 < sum(read) <= 3 * data_prep.PEEK_BYTES, read


def test_the_stage_refuses_the_same_files_with_the_same_message(tmp_path):
    tab = write(tmp_path / "train.csv", labelled(20), delimiter="\t")
    cfg = _csv_cfg(tmp_path, tab)
    with pytest.raises(DataFileError, match="tab-separated"):
        prepare(tmp_path, cfg)
    one = write(tmp_path / "many.csv", labelled(30, labels=("a", "a", "b")))
    cfg = _csv_cfg(tmp_path, one, n_train=1)
    with pytest.raises(ValueError, match="has one class"):
        prepare(tmp_path, cfg, "sampled")


# ---------------------------------------------------------------- through the real CLI


def _env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MEMOTUNE_", "HF_", "PREFECT_API", "AWS_"))}
    env.update(HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1",
               PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


def _plan(tmp_path: Path, doc: dict[str, Any]) -> tuple[subprocess.CompletedProcess, Path]:
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(doc))
    store = tmp_path / "store"
    proc = subprocess.run([MEMOTUNE, "plan", str(cfg), "--store", str(store)], capture_output=True,
                          text=True, env=_env(tmp_path), cwd=tmp_path, timeout=180)
    return proc, store


@pytest.mark.parametrize("kind", ["wrong delimiter", "one class", "empty", "missing column"])
def test_the_cli_refuses_malformed_files_with_one_line_before_the_store(tmp_path, kind):
    data = tmp_path / "data"
    dev = write(data / "dev.csv", labelled(6))
    train = data / "train.csv"
    if kind == "wrong delimiter":
        write(train, labelled(20), delimiter="\t")
        needles = ["data_prep.target.data_files.train", "delimiter: tab"]
    elif kind == "one class":
        write(train, labelled(20, labels=("pos",)))
        needles = ["data_prep.target.data_files.train", "one class (pos)"]
    elif kind == "empty":
        train.write_text("")
        needles = ["is empty"]
    else:
        write(train, labelled(20), columns=("text",))
        needles = ["no column 'label'", "columns: 'text'"]
    proc, store = _plan(tmp_path, {"data_prep": {"target": {
        "source": "csv", "data_files": {"train": "data/train.csv", "validation": "data/dev.csv"}}}})
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-3000:]
    assert str(train) in lines[0] and "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert proc.stdout == "" and not store.exists()
    assert dev.exists()


def test_the_cli_plans_a_tsv_source(tmp_path):
    write(tmp_path / "data" / "train.tsv", labelled(20, labels=("neg", "pos")), delimiter="\t")
    write(tmp_path / "data" / "dev.tsv", labelled(6), delimiter="\t")
    proc, store = _plan(tmp_path, {"data_prep": {"intermediate": {"task": "none"}, "target": {
        "source": "tsv", "data_files": {"train": "data/train.tsv", "validation": "data/dev.tsv"}}}})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "data_prep" in proc.stdout and store.exists()
