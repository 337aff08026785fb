"""Stage 1, data_prep: load, synthesize the real/fake task, tokenize, split.

Sources are Hugging Face `datasets`: a hub name, or local/remote csv, json or
parquet files through fsspec; `builtin` is the generated offline default.
Outputs (all plain files, no pickles): tokenizer/, target_train.parquet,
target_validation.parquet, guidance.parquet (held-out slice of the target
train split for the in-stage lookahead mode), intermediate_train.parquet when
the intermediate task is on, and info.json.
"""

from __future__ import annotations

import json
import math
import random
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from stages import builtin_world
from stages.base import Params, Stage, StageContext, StageResult

FILE_FORMATS = ("csv", "json", "parquet")


class DataSource(Params):
    """Where a dataset comes from: `builtin`, a hub name, or csv/json/parquet files."""

    source: str = "builtin"
    subset: str | None = None
    revision: str | None = None
    data_files: dict[str, str | list[str]] | None = None

    @field_validator("data_files")
    @classmethod
    def _files_need_format(cls, v: Any, info: Any) -> Any:
        if v is not None and info.data.get("source") not in FILE_FORMATS:
            raise ValueError(f"data_files needs source to be one of {FILE_FORMATS}")
        return v

    def file_uris(self) -> list[str]:
        """The local/remote files this source reads (for the data fingerprint)."""
        if not self.data_files:
            return []
        uris: list[str] = []
        for v in self.data_files.values():
            uris.extend([v] if isinstance(v, str) else v)
        return uris


class TargetData(DataSource):
    text_fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    label_field: str = "label"
    train_split: str = "train"
    validation_split: str = "validation"
    n_train: int | None = Field(default=None, gt=0)
    n_validation: int | None = Field(default=None, gt=0)


class IntermediateData(DataSource):
    """The STILTs real/fake task (Chang & Lu 2021), or none."""

    task: Literal["realfake", "none"] = "realfake"
    text_field: str = "text"
    split: str = "train"
    n_examples: int = Field(default=3000, gt=0)
    n_choices: int = Field(default=4, ge=2)
    min_words: int = Field(default=20, ge=2)
    max_words: int = Field(default=30, ge=2)
    generator: str = "builtin"  # or a causal LM name/path for transformers
    top_p: float = Field(default=0.9, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0)


class BuiltinSizes(Params):
    n_train: int = Field(default=1000, gt=0)
    n_validation: int = Field(default=1000, gt=0)
    corpus_size: int = Field(default=4000, gt=0)


class DataPrepParams(Params):
    target: TargetData = Field(default_factory=TargetData)
    intermediate: IntermediateData = Field(default_factory=IntermediateData)
    builtin: BuiltinSizes = Field(default_factory=BuiltinSizes)
    tokenizer: str = "builtin"  # or a tokenizer name/path (AutoTokenizer)
    max_length: int = Field(default=32, ge=8)
    guidance_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    guidance_min: int = Field(default=32, ge=1)
    seed: int = 0

    def data_uris(self) -> list[str]:
        return self.target.file_uris() + self.intermediate.file_uris()


# ---------------------------------------------------------------- loading


def _load_split(src: DataSource, split: str) -> list[dict]:
    import datasets

    if src.source in FILE_FORMATS:
        if not src.data_files or split not in src.data_files:
            raise ValueError(f"data_files has no '{split}' split for source {src.source}")
        ds = datasets.load_dataset(src.source, data_files={split: src.data_files[split]}, split=split)
    else:
        ds = datasets.load_dataset(src.source, src.subset, split=split, revision=src.revision)
    return ds.to_list()


def _target_rows(p: DataPrepParams) -> tuple[list[dict], list[dict]]:
    t = p.target
    if t.source == "builtin":
        b = p.builtin
        train = builtin_world.target_examples(b.n_train, seed=p.seed * 1000 + 1)
        val = builtin_world.target_examples(b.n_validation, seed=p.seed * 1000 + 2)
    else:
        train, val = _load_split(t, t.train_split), _load_split(t, t.validation_split)
    for name, rows in (("train", train), ("validation", val)):
        for f in [*t.text_fields, t.label_field]:
            if rows and f not in rows[0]:
                raise ValueError(f"target {name} split has no field '{f}' (fields: {sorted(rows[0])})")
    return train[: t.n_train], val[: t.n_validation]


def _sentences(p: DataPrepParams) -> list[str]:
    it = p.intermediate
    if it.source == "builtin":
        return builtin_world.corpus(it.n_examples, seed=p.seed * 1000 + 3)
    out: list[str] = []
    for row in _load_split(it, it.split):
        for sent in re.split(r"(?<=[.!?])\s+", str(row[it.text_field])):
            words = sent.split()
            if len(words) >= it.min_words:
                out.append(" ".join(words[: it.max_words]))
        if len(out) >= it.n_examples:
            break
    return out[: it.n_examples]


def _generator(p: DataPrepParams, sentences: Sequence[str], ctx: StageContext) -> Callable:
    it = p.intermediate
    if it.generator == "builtin":
        fit_on = sentences
        if it.source == "builtin":  # fit on a separate corpus so fakes don't copy the reals
            fit_on = builtin_world.corpus(p.builtin.corpus_size, seed=p.seed * 1000 + 4)
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


def _builtin_tokenizer(texts: Sequence[str], out_dir: Path):
    """A word-level tokenizer built locally with `tokenizers` (no hub)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=specials))
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


def run(params: Mapping[str, Any], upstream: Mapping[str, Path], workdir: Path,
        ctx: StageContext) -> StageResult:
    p = DataPrepParams.model_validate(params)
    train, val = _target_rows(p)
    labels = sorted({r[p.target.label_field] for r in train + val}, key=str)
    label_id = {v: i for i, v in enumerate(labels)}

    realfake: list[dict] = []
    sentences: list[str] = []
    if p.intermediate.task == "realfake":
        sentences = _sentences(p)
        gen = _generator(p, sentences, ctx)
        realfake = builtin_world.realfake_examples(sentences, gen, p.intermediate.n_choices,
                                                   seed=p.seed * 1000 + 5)
        if not realfake:
            raise ValueError("intermediate: no real/fake examples could be made from the source")

    if p.tokenizer == "builtin":
        texts = [" ".join(str(r[f]) for f in p.target.text_fields) for r in train] + sentences
        texts += [e for r in realfake for e in r["endings"]]
        tok = _builtin_tokenizer(texts, workdir / "tokenizer")
    else:
        tok = load_tokenizer(p.tokenizer)
        tok.save_pretrained(workdir / "tokenizer")

    guide_idx = guidance_indices(len(train), p.guidance_fraction, p.guidance_min)
    guide = [r for i, r in enumerate(train) if i in guide_idx]
    train = [r for i, r in enumerate(train) if i not in guide_idx]

    def target_columns(rows: list[dict]) -> dict[str, np.ndarray]:
        f = p.target.text_fields
        first = [str(r[f[0]]) for r in rows]
        second = [str(r[f[1]]) for r in rows] if len(f) == 2 else None
        cols = _encode(tok, first, second, p.max_length)
        cols["labels"] = np.array([label_id[r[p.target.label_field]] for r in rows], dtype=np.int32)
        return cols

    write_table(workdir / "target_train.parquet", target_columns(train))
    write_table(workdir / "target_validation.parquet", target_columns(val))
    write_table(workdir / "guidance.parquet", target_columns(guide))
    n_choices = p.intermediate.n_choices
    if realfake:
        # one text per choice: prompt + ending, like a sentence of the target task
        texts = [f"{r['prompt']} {e}" for r in realfake for e in r["endings"]]
        cols = _encode(tok, texts, None, p.max_length)
        cols = {k: v.reshape(len(realfake), n_choices, -1) for k, v in cols.items()}
        cols["labels"] = np.array([r["label"] for r in realfake], dtype=np.int32)
        write_table(workdir / "intermediate_train.parquet", cols)

    info = {
        "num_labels": len(labels), "label_names": [str(v) for v in labels],
        "n_choices": n_choices if realfake else 0, "max_length": p.max_length,
        "vocab_size": len(tok), "tokenizer": p.tokenizer,
        "counts": {"target_train": len(train), "target_validation": len(val),
                   "guidance": len(guide), "intermediate_train": len(realfake)},
    }
    (workdir / "info.json").write_text(json.dumps(info, indent=2))
    ctx.logger.info("data_prep: %s", info["counts"])
    return StageResult(metrics={k: float(v) for k, v in info["counts"].items()}, meta=info)


def data_inputs(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The files data_prep reads, by role ("target.train", "intermediate.train", ...)."""
    roles: dict[str, list[str]] = {}
    for name in ("target", "intermediate"):
        for split, files in (params[name].get("data_files") or {}).items():
            roles[f"{name}.{split}"] = [files] if isinstance(files, str) else list(files)
    return roles


STAGE = Stage(name="data_prep", version="1", params_model=DataPrepParams, run=run,
              needs=(), code=(sys.modules[__name__], builtin_world), inputs=data_inputs)
