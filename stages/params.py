"""What each stage accepts: its params, as strict pydantic models.

No ML imports here (numpy, pyarrow, torch, transformers): flows/ validates a
config and computes its stage keys without loading the stack that only a
computing stage needs. A stage's key covers its params by value (every default
spelled out), so this module is not part of any stage's code hash.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator

from stages.base import Params
from stages.optim.settings import parse_optimizer_settings

# ---------------------------------------------------------------- data_prep

# source -> reader: `tsv` is csv with a tab, `jsonl` is json (lines or one document)
FILE_FORMATS: dict[str, str] = {"csv": "csv", "tsv": "csv", "json": "json", "jsonl": "json",
                                "parquet": "parquet"}
DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|",
                   "space": " "}


class DataSource(Params):
    """Where a dataset comes from: `builtin`, a hub name, or csv/tsv/json/jsonl/parquet files."""

    source: str = "builtin"
    subset: str | None = None
    revision: str | None = None
    data_files: dict[str, str | list[str]] | None = None
    # csv/tsv only; None: tab for source tsv and *.tsv / *.tab files, else comma
    delimiter: str | None = None

    @field_validator("data_files")
    @classmethod
    def _files_need_format(cls, v: Any, info: Any) -> Any:
        if v is not None and info.data.get("source") not in FILE_FORMATS:
            raise ValueError(f"data_files needs source to be one of {', '.join(FILE_FORMATS)}")
        return v

    @field_validator("delimiter")
    @classmethod
    def _one_character(cls, v: str | None, info: Any) -> str | None:
        if v is None:
            return v
        source = info.data.get("source")
        if FILE_FORMATS.get(source) != "csv":
            raise ValueError(f"a delimiter applies to csv/tsv files only (source is {source!r})")
        v = DELIMITER_NAMES.get(v.lower(), v) if len(v) > 1 else v
        if len(v) != 1 or v in "\"\r\n":
            raise ValueError(f"must be one character (or tab, comma, semicolon, pipe, space), "
                             f"got {v!r}")
        if source == "tsv" and v != "\t":
            raise ValueError(f"source tsv is tab-separated; for {v!r} use source csv")
        return v


class TargetData(DataSource):
    text_fields: list[str] = Field(default_factory=lambda: ["text"], min_length=1, max_length=2)
    label_field: str = "label"
    train_split: str = "train"
    validation_split: str = "validation"
    # n_train / n_validation: a random sample (seeded by sample_seed) of that many rows,
    # per label in proportion when stratify is true; None: every row, in file order
    n_train: int | None = Field(default=None, gt=0)
    n_validation: int | None = Field(default=None, gt=0)
    sample_seed: int = Field(default=0, ge=0)
    stratify: bool = False


class IntermediateData(DataSource):
    """The STILTs real/fake task (Chang & Lu 2021), or none."""

    task: Literal["realfake", "none"] = "realfake"
    text_field: str = "text"
    split: str = "train"
    n_examples: int = Field(default=3000, gt=0)
    n_choices: int = Field(default=4, ge=2)
    min_words: int = Field(default=20, ge=2)
    max_words: int = Field(default=30, ge=2)
    # fewer than n_examples sentences of >= min_words: min_words is lowered, at most down
    # to min(min_words_floor, min_words), until enough qualify (info.json says what was used)
    min_words_floor: int = Field(default=8, ge=2)
    generator: str = "builtin"  # or a causal LM name/path for transformers
    top_p: float = Field(default=0.9, gt=0, le=1)
    temperature: float = Field(default=1.0, gt=0)


class BuiltinSizes(Params):
    n_train: int = Field(default=1000, gt=0)
    n_validation: int = Field(default=1000, gt=0)
    corpus_size: int = Field(default=4000, gt=0)


# max_length: auto is clamped to this range. Not below 32 (the former fixed default): the
# built-in task's texts are 12 tokens, and at 12 its intermediate real/fake training
# stalled at chance in 4 of 4 seeds (3 of 4 learned at 32; the same model in law, other
# dropout draws), so short texts keep the length they always had.
MAX_LENGTH_AUTO = (32, 512)


class DataPrepParams(Params):
    target: TargetData = Field(default_factory=TargetData)
    intermediate: IntermediateData = Field(default_factory=IntermediateData)
    builtin: BuiltinSizes = Field(default_factory=BuiltinSizes)
    tokenizer: str = "builtin"  # or a tokenizer name/path (AutoTokenizer)
    # the builtin tokenizer's vocabulary (from all training text): at most vocab_size
    # entries, words seen at least min_frequency times
    vocab_size: int = Field(default=30000, ge=16)
    min_frequency: int = Field(default=1, ge=1)
    # tokens per text; auto: the max_length_percentile of the tokenized training texts'
    # lengths (target train, and the intermediate task's), clamped to MAX_LENGTH_AUTO
    max_length: Annotated[int, Field(ge=8)] | Literal["auto"] = "auto"
    max_length_percentile: float = Field(default=95.0, ge=50, le=100)
    guidance_fraction: float = Field(default=0.05, gt=0, lt=0.5)
    guidance_min: int = Field(default=32, ge=1)
    seed: int = 0

    @field_validator("max_length", mode="before")
    @classmethod
    def _length_or_auto(cls, v: Any) -> Any:
        if isinstance(v, str) and v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int | float) or v < 8 or \
                (isinstance(v, float) and not v.is_integer()):
            shown = repr(v) if not isinstance(v, int | float) or abs(v) < 1e12 else "a huge number"
            raise ValueError(f"must be auto or a whole number >= 8, got {shown[:40]}")
        return v


def data_inputs(params: Mapping[str, Any]) -> dict[str, list[str]]:
    """The files data_prep reads, by role ("target.train", "intermediate.train", ...)."""
    roles: dict[str, list[str]] = {}
    for name in ("target", "intermediate"):
        for split, files in (params[name].get("data_files") or {}).items():
            roles[f"{name}.{split}"] = [files] if isinstance(files, str) else list(files)
    return roles


# ---------------------------------------------------------------- fine-tuning

Head = Literal["sequence", "multiple_choice"]


class BuiltinModel(Params):
    """A small BERT built from a config: the offline default's base model."""

    hidden_size: int = Field(default=64, gt=0)
    layers: int = Field(default=2, gt=0)
    heads: int = Field(default=2, gt=0)
    intermediate_size: int = Field(default=128, gt=0)
    dropout: float = Field(default=0.1, ge=0, lt=1)


class ModelSpec(Params):
    """The base model: a pretrained checkpoint by hub name or local path, or builtin."""

    name_or_path: str | None = None
    builtin: BuiltinModel = Field(default_factory=BuiltinModel)


class Validation(Params):
    """Held-out evaluation while training: a curve, the best epoch, early stopping.

    The held-out slice is the stage's guidance split (never trained on; the
    lookahead mode also steers by it). `select: best` keeps the weights of the
    best evaluated epoch; `patience` stops after that many evaluations without
    improvement. With the defaults the trained weights are those of the last
    epoch, as without evaluation (it draws no random numbers).
    """

    every: int = Field(default=1, ge=0)  # evaluate every N epochs; 0: never
    metric: Literal["loss", "accuracy"] = "loss"
    select: Literal["last", "best"] = "last"
    patience: int | None = Field(default=None, gt=0)


class FinetuneParams(Params):
    epochs: int = Field(default=3, gt=0)
    batch_size: int = Field(default=32, gt=0)
    max_steps: int | None = Field(default=None, gt=0)
    seed: int = 0
    validation: Validation = Field(default_factory=Validation)
    optimizer: dict[str, Any] = Field(default_factory=lambda: {"mode": "adamw", "lr": 1e-3},
                                      validate_default=True)

    @field_validator("optimizer")
    @classmethod
    def _full_optimizer_settings(cls, v: dict[str, Any]) -> dict[str, Any]:
        # every default spelled out, so the stage key covers the mode's settings
        return parse_optimizer_settings(v).model_dump()

    @property
    def decay_epochs(self) -> int:
        """A wsd schedule's decaying epochs: its fraction of the run, at least one."""
        return min(self.epochs, max(1, round(self.optimizer["decay"] * self.epochs)))


class IntermediateParams(FinetuneParams):
    epochs: int = Field(default=4, gt=0)
    enabled: bool = True
    model: ModelSpec = Field(default_factory=ModelSpec)
    guidance_size: int = Field(default=64, gt=0)  # held-out real/fake examples for lookahead


class TargetParams(FinetuneParams):
    epochs: int = Field(default=10, gt=0)


# ---------------------------------------------------------------- evaluate

METRICS = ("accuracy", "f1", "mcc", "loss")


class EvaluateParams(Params):
    batch_size: int = Field(default=256, gt=0)


# ---------------------------------------------------------------- checkpoint prefixes

PREFIX_SCHEDULE = "stable prefix"  # a boundary's schedule: the same for constant and wsd


def training_boundaries(params: Mapping[str, Any]) -> dict[int, dict[str, Any]]:
    """The epoch boundaries of a training stage that a longer run passes through.

    {epoch: the params whose key names that boundary's checkpoint}. A run of
    E epochs with a prefix-stable schedule (no warm-up; `constant`, or `wsd`
    before its decay) reaches, at the end of epoch e, exactly the state of
    every run that differs only in a later end (more epochs, or a wsd decay
    that starts after e): same weights, optimizer moments, RNG and data
    order. So the boundary's key is the stage's params with `epochs` set to e
    and the schedule named by what the prefix has in common. Any other
    schedule, optimizer mode (their state is more than AdamW's moments),
    `max_steps`, or a validation that picks the best epoch or stops early has
    no boundaries.
    """
    o, v = params["optimizer"], params["validation"]
    if (o["mode"] != "adamw" or o["warmup"] != 0 or params.get("max_steps") is not None
            or v["select"] != "last" or v["patience"] is not None
            or not params.get("enabled", True)):
        return {}
    epochs = params["epochs"]
    if o["schedule"] == "constant":
        stable = epochs
    elif o["schedule"] == "wsd":
        stable = epochs - min(epochs, max(1, round(o["decay"] * epochs)))
    else:
        return {}
    prefix = {**{k: x for k, x in o.items() if k != "decay"}, "schedule": PREFIX_SCHEDULE}
    return {e: {**params, "epochs": e, "optimizer": prefix} for e in range(1, stable + 1)}
