"""Pipeline config: YAML in, one validated object out, or one clear error.

Every field has a default, and the defaults ARE the built-in offline example
(examples/offline_default.yaml spells them out), so `memotune run` with no
config runs it.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from flows.validation import ConfigError, check_values, one_line, show_value
from stages.optim.settings import OptimizerSettings
from stages.params import METRICS, DataPrepParams, EvaluateParams, IntermediateParams, TargetParams
from stages.pipeline import STAGE_NAMES
from tuners.search_spec import SearchSpec, SpecError, check_stage_names, spec_error_line

# The built-in example's search space: both loops (tune adamw's learning rate,
# or let hypergradient adapt it and tune its initial value) and the STILTs switch.
DEFAULT_SEARCH: dict[str, dict[str, dict[str, Any]]] = {
    "intermediate_finetune": {
        "enabled": {"type": "categorical", "choices": [True, False]},
        "epochs": {"type": "int", "low": 1, "high": 4},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
    },
    "target_finetune": {
        "epochs": {"type": "int", "low": 3, "high": 12},
        "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True},
        # Adam-HD's own hyper-learning-rate, only when it adapts the lr
        "optimizer.hypergrad_lr": {"type": "float", "low": 1e-7, "high": 1e-5, "log": True,
                                   "when": {"optimizer.mode": ["hypergradient"]}},
    },
}


__all__ = ["ConfigError", "PipelineConfig", "apply_params", "apply_values", "load_config",
           "parse_override", "set_dotted"]

class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "offline-default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    objective: Literal[METRICS] = "accuracy"  # type: ignore[valid-type]
    data_prep: DataPrepParams = Field(default_factory=DataPrepParams)
    intermediate_finetune: IntermediateParams = Field(default_factory=IntermediateParams)
    target_finetune: TargetParams = Field(default_factory=TargetParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    # empty unless given: a config for other data must not inherit the built-in
    # example's space (load_config() with no file is that example, space included).
    # Typed (tuners.search_spec); dumps as written (studies store it as JSON).
    search: SearchSpec = Field(default_factory=dict)

    @model_validator(mode="after")
    def _search_names(self) -> PipelineConfig:
        """Each stage is the pipeline's and each dotted name one setting of its stage's
        params model; SpecError names the field, e.g. search.<stage>.<name>."""
        check_stage_names(self.search, STAGE_NAMES)
        for stage, params in self.search.items():
            for name in params:
                problem = _setting_problem(type(getattr(self, stage)), stage, name)
                if problem is not None:
                    raise SpecError(("search", stage, name), problem)
        return self

    def stage_params(self, stage: str) -> dict[str, Any]:
        """A stage's params with every default spelled out (what its key hashes)."""
        return getattr(self, stage).model_dump(mode="json")

    def objective_value(self, metrics: dict[str, float]) -> float:
        """Maximized by the tuner: loss is negated."""
        value = metrics[self.objective]
        return -value if self.objective == "loss" else value


# dict-valued params fields validated as settings models (the stage keeps the dict)
_SETTINGS_DICTS: dict[str, Any] = {"optimizer": OptimizerSettings}


def _settings_models(annotation: Any) -> tuple[list[type[BaseModel]], bool]:
    """The settings models a field holds (several for a union, such as the optimizer
    modes) and whether it also holds plain values (a number, a name, None)."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return _settings_models(get_args(annotation)[0])
    if origin is Union or origin is UnionType:
        models: list[type[BaseModel]] = []
        plain = False
        for arg in get_args(annotation):
            sub, sub_plain = _settings_models(arg)
            models += [m for m in sub if m not in models]
            plain = plain or sub_plain
        return models, plain
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], False
    return [], True


def _some(names: list[str], n: int = 12) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _setting_problem(model: type[BaseModel], stage: str, name: str) -> str | None:
    """Why the dotted `name` is not one setting of a stage's params `model`, or None.

    Walks nested models; a union (the optimizer's modes) offers the fields of all of
    its models, so a field of one mode only is a name (the mode may be tuned too).
    """
    parts = name.split(".")
    models, where = [model], stage
    for i, part in enumerate(parts):
        fields = sorted({f for m in models for f in m.model_fields})
        if part not in fields:
            close = difflib.get_close_matches(part, fields, n=1) or sorted(
                (f for f in fields if part and (part.startswith(f) or f.startswith(part))),
                key=len)[-1:]
            hint = f"; did you mean {close[0]!r}?" if close else f" (settings: {_some(fields)})"
            return f"unknown parameter: {where} has no setting {part!r}{hint}"
        models_i: list[type[BaseModel]] = []
        plain = False
        for m in models:
            field = m.model_fields.get(part)
            if field is None:
                continue
            sub, sub_plain = _settings_models(field.annotation)
            if not sub and part in _SETTINGS_DICTS:
                sub, sub_plain = _settings_models(_SETTINGS_DICTS[part])
            models_i += [x for x in sub if x not in models_i]
            plain = plain or sub_plain
        if i == len(parts) - 1:
            if models_i and not plain:
                inner = sorted({f for m in models_i for f in m.model_fields})
                return (f"{where}.{part} is a group of settings, not one setting "
                        f"(name one of its settings: {_some(inner)})")
            return None
        if not models_i:
            return (f"unknown parameter: {part!r} is a single setting of {where}, "
                    f"with no {parts[i + 1]!r} in it")
        models, where = models_i, f"{where}.{part}"
    return None


def starting_search(cfg: PipelineConfig) -> dict[str, dict[str, dict[str, Any]]]:
    """A first `search:` section for cfg's stages (what `tune --init-search` prints):
    each fine-tuning stage's lr within 10x of its value and its epochs within 2x,
    and whether to run the intermediate task at all."""
    search: dict[str, dict[str, dict[str, Any]]] = {}
    for stage in ("intermediate_finetune", "target_finetune"):
        params = cfg.stage_params(stage)
        lr, epochs = float(params["optimizer"]["lr"]), int(params["epochs"])
        space: dict[str, dict[str, Any]] = {}
        if stage == "intermediate_finetune":
            space["enabled"] = {"type": "categorical", "choices": [True, False]}
        space["epochs"] = {"type": "int", "low": max(1, epochs // 2), "high": max(2, 2 * epochs)}
        space["optimizer.lr"] = {"type": "float", "low": float(f"{lr / 10:.3g}"),
                                 "high": float(f"{min(10.0, lr * 10):.3g}"), "log": True}
        search[stage] = space
    return search


def set_dotted(doc: dict[str, Any], dotted: str, value: Any) -> None:
    """doc['a']['b']['c'] = value for 'a.b.c', creating dicts on the way."""
    parts = dotted.split(".")
    node = doc
    for part in parts[:-1]:
        child = node.get(part)
        if not isinstance(child, dict):
            child = node[part] = {}
        node = child
    node[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """'stage.param=value' with value parsed as YAML (so 3 is an int, 1e-3 a float)."""
    shown = f"--set {show_value(item, 100)}"
    if "=" not in item:
        raise ConfigError(f"{shown}: expected stage.param=value")
    dotted, raw = item.split("=", 1)
    if not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(f"{shown}: bad field name")
    value = _parse_yaml(raw, shown) if raw else ""
    _check_size(value, f"{shown}: {dotted}")
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string
    return dotted, value


_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _looks_numeric(text: str) -> bool:
    """PyYAML (YAML 1.1) reads 1e-3 as a string; such strings are floats here."""
    return bool(_SCI.match(text.strip()))


def _fix_yaml_floats(node: Any) -> Any:
    """Scientific-notation strings -> floats, everywhere (sizes already checked)."""
    if isinstance(node, dict):
        return {k: _fix_yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_fix_yaml_floats(v) for v in node]
    if isinstance(node, str) and _looks_numeric(node):
        return float(node)
    return node


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                doc: dict[str, Any] | None = None) -> PipelineConfig:
    """Read YAML (or start from the built-in defaults), apply --set overrides, validate.

    Overrides apply to the complete, validated document (every default spelled
    out), so `--set target_finetune.optimizer.weight_decay=0.1` keeps the rest.
    """
    source = str(path) if path is not None else "built-in default"
    if doc is None and path is None:
        doc = {"search": copy.deepcopy(DEFAULT_SEARCH)}
    elif doc is None:
        doc = _resolve_paths(_read_yaml(path), Path(path).parent)
    cfg = _validate(doc, source)
    if not overrides:
        return cfg
    return apply_values(cfg, [parse_override(item) for item in overrides], source)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"{p}: cannot read: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not a UTF-8 text YAML file") from None
    if "\x00" in text:
        raise ConfigError(f"{p}: not a UTF-8 text YAML file (it has NUL bytes)")
    loaded = _parse_yaml(text, str(p))
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    for key, value in (loaded or {}).items():
        _check_size(value, f"{p}: {show_value(key)}")
    return _fix_yaml_floats(loaded or {})


def _resolve_paths(doc: dict[str, Any], base: Path) -> dict[str, Any]:
    """Relative local paths in a config file are relative to the file's folder.

    data_files always; tokenizer, model and generator names only when such a
    path exists there (otherwise they are hub names). URLs are left alone.
    """
    def local(value: Any) -> bool:
        return isinstance(value, str) and "://" not in value and not Path(value).is_absolute()

    def resolve(value: Any) -> Any:
        if isinstance(value, list):
            return [resolve(v) for v in value]
        return os.path.normpath(base.absolute() / value) if local(value) else value

    prep = doc.get("data_prep")
    if isinstance(prep, dict):
        for source in ("target", "intermediate"):
            node = prep.get(source)
            if isinstance(node, dict) and isinstance(node.get("data_files"), dict):
                node["data_files"] = {k: resolve(v) for k, v in node["data_files"].items()}
        finetune = doc.get("intermediate_finetune")
        model = finetune.get("model") if isinstance(finetune, dict) else None
        for parent, name in ((prep, "tokenizer"), (prep.get("intermediate"), "generator"),
                             (model, "name_or_path")):
            if isinstance(parent, dict) and local(parent.get(name)) and \
                    (base / parent[name]).exists():
                parent[name] = resolve(parent[name])
    return doc


def _parse_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, every failure as one ConfigError line."""
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{where}: not valid YAML: {e.problem or e.context}{at}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as e:
        what = "a number with too many digits" if "digits" in str(e) else str(e)[:160]
        raise ConfigError(f"{where}: not valid YAML: {what}") from None


MAX_VALUES = 100_000  # YAML aliases can make a recursive or exponentially big document


def _check_size(node: Any, where: str) -> None:
    """Refuse recursive or alias-exploded documents before anything walks them."""
    count, stack = 0, [node]
    while stack:
        item = stack.pop()
        count += 1
        if count > MAX_VALUES:
            raise ConfigError(f"{where}: more than {MAX_VALUES} values "
                              f"(a recursive or repeated YAML alias?)")
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            stack.extend(item)


def _non_finite(node: Any, path: str) -> str | None:
    """Path of the first NaN or infinity anywhere in a document (search included)."""
    if isinstance(node, float):
        return None if math.isfinite(node) else path
    if isinstance(node, Mapping):
        items = ((f"{path}.{k}" if path else str(k), v) for k, v in node.items())
    elif isinstance(node, list | tuple | set | frozenset):
        items = ((f"{path}[{i}]", v) for i, v in enumerate(node))
    else:
        return None
    for sub, value in items:
        found = _non_finite(value, sub)
        if found is not None:
            return found
    return None


def _integral_ints(node: Any) -> Any:
    """3.0 -> 3 everywhere: the strict pass then accepts it for int and float fields alike."""
    if isinstance(node, dict):
        return {k: _integral_ints(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_integral_ints(v) for v in node]
    if isinstance(node, float) and node.is_integer():
        return int(node)
    return node


_OPTIMIZER = TypeAdapter(OptimizerSettings)
_FINETUNE = ("intermediate_finetune", "target_finetune")


def _validate(doc: dict[str, Any], source: str) -> PipelineConfig:
    """pydantic, then a strict pass (no str/bool coerced to a number, no int/str to a bool),
    then bounds and cross-field rules (flows.validation). One ConfigError line on failure."""
    if not isinstance(doc, Mapping):
        raise ConfigError(f"{source}: the top level must be a mapping")
    bad = _non_finite(doc, "")
    if bad is not None:
        raise ConfigError(f"{source}: {one_line(bad)[:160]}: must be a finite number")
    for stage in _FINETUNE:
        opt = doc.get(stage, {}).get("optimizer") if isinstance(doc.get(stage), dict) else None
        if isinstance(opt, dict) and "rule" in opt and not isinstance(opt["rule"], str | None):
            # Adam-HD's defaulting looks the rule up in a dict before pydantic checks it
            raise ConfigError(f"{source}: {stage}.optimizer.rule: must be 'additive' or "
                              f"'multiplicative', got {show_value(opt['rule'])}")
    try:
        cfg = PipelineConfig.model_validate(doc)
        strict_doc = _integral_ints(dict(doc))
        PipelineConfig.model_validate(strict_doc, strict=True)
        for stage in _FINETUNE:
            raw = strict_doc.get(stage)
            if isinstance(raw, dict) and isinstance(raw.get("optimizer"), dict):
                try:
                    _OPTIMIZER.validate_python(raw["optimizer"], strict=True)
                except ValidationError as e:
                    raise ConfigError(_message(e, source, (stage, "optimizer"))) from None
    except ValidationError as e:
        raise ConfigError(_message(e, source)) from None
    except ConfigError:
        raise
    except (TypeError, ValueError, OverflowError, RecursionError) as e:  # from a model validator
        raise ConfigError(f"{source}: {str(e)[:200]}") from None
    try:
        check_values(cfg)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
    return cfg


def _message(e: ValidationError, source: str, prefix: tuple[str, ...] = ()) -> str:
    err = e.errors()[0]
    more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
    if not prefix and (err["loc"][:1] == ("search",)
                       or isinstance((err.get("ctx") or {}).get("error"), SpecError)):
        return f"{source}: {spec_error_line(err)}{more}"
    parts = [*prefix, *(str(x) for x in err["loc"])]
    field = ".".join(p if len(p) <= 60 else p[:57] + "..." for p in parts) or "(top level)"
    return f"{source}: {field}: {err['msg']}{more}"


def apply_values(cfg: PipelineConfig, values: list[tuple[str, Any]],
                 source: str = "overrides") -> PipelineConfig:
    """A validated copy of cfg with dotted values set.

    Switching `<stage>.optimizer.mode` starts that optimizer from the new mode's
    own defaults (settings of one mode do not carry over to another).
    """
    doc = cfg.model_dump(mode="json")
    ordered = sorted(values, key=lambda kv: not kv[0].endswith("optimizer.mode"))
    for dotted, value in ordered:
        if dotted.endswith("optimizer.mode"):
            parent = dotted.rsplit(".", 1)[0]
            node: Any = doc
            for part in parent.split("."):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            if not isinstance(node, dict) or node.get("mode") != value:
                set_dotted(doc, parent, {"mode": value})
                continue
        set_dotted(doc, dotted, value)
    return _validate(doc, source)


def apply_params(cfg: PipelineConfig, stage_params: dict[str, dict[str, Any]]) -> PipelineConfig:
    """A copy of cfg with tuner-chosen values set ({stage: {'a.b': value}}), validated."""
    values = [(f"{stage}.{dotted}", v) for stage, ps in stage_params.items() for dotted, v in ps.items()]
    return apply_values(cfg, values, "tuner candidate")
