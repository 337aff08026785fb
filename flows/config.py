"""Pipeline config: YAML in, one validated object out, or one clear error.

Every field has a default, and the defaults ARE the built-in offline example
(examples/offline_default.yaml spells them out), so `memotune run` with no
config runs it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from stages.data_prep import DataPrepParams
from stages.evaluate import METRICS, EvaluateParams
from stages.finetune import IntermediateParams, TargetParams
from stages.pipeline import STAGE_NAMES

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


class ConfigError(ValueError):
    """Bad config: the message names the file and the field."""


class PipelineConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "offline-default"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    objective: Literal[METRICS] = "accuracy"  # type: ignore[valid-type]
    data_prep: DataPrepParams = Field(default_factory=DataPrepParams)
    intermediate_finetune: IntermediateParams = Field(default_factory=IntermediateParams)
    target_finetune: TargetParams = Field(default_factory=TargetParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    search: dict[str, dict[str, dict[str, Any]]] = Field(default_factory=lambda: DEFAULT_SEARCH)

    @field_validator("search")
    @classmethod
    def _known_stages(cls, v: dict[str, Any]) -> dict[str, Any]:
        for stage in v:
            if stage not in STAGE_NAMES:
                raise ValueError(f"unknown stage '{stage}' (stages: {', '.join(STAGE_NAMES)})")
        return v

    def stage_params(self, stage: str) -> dict[str, Any]:
        """A stage's params with every default spelled out (what its key hashes)."""
        return getattr(self, stage).model_dump(mode="json")

    def objective_value(self, metrics: dict[str, float]) -> float:
        """Maximized by the tuner: loss is negated."""
        value = metrics[self.objective]
        return -value if self.objective == "loss" else value


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
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected stage.param=value")
    dotted, raw = item.split("=", 1)
    if not dotted or any(not p for p in dotted.split(".")):
        raise ConfigError(f"--set {item!r}: bad field name")
    value = yaml.safe_load(raw) if raw else ""
    if isinstance(value, str) and _looks_numeric(value):
        value = float(value)  # YAML 1.1 reads 1e-3 as a string
    return dotted, value


_SCI = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _looks_numeric(text: str) -> bool:
    """PyYAML (YAML 1.1) reads 1e-3 as a string; such strings are floats here."""
    return bool(_SCI.match(text.strip()))


def _fix_yaml_floats(node: Any) -> Any:
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
    if doc is None:
        doc = _read_yaml(path) if path is not None else {}
    cfg = _validate(doc, source)
    if not overrides:
        return cfg
    return apply_values(cfg, [parse_override(item) for item in overrides], source)


def _read_yaml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        loaded = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"{p}: the top level must be a mapping")
    return _fix_yaml_floats(loaded or {})


def _validate(doc: dict[str, Any], source: str) -> PipelineConfig:
    try:
        return PipelineConfig.model_validate(doc)
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(x) for x in err["loc"]) or "(top level)"
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{source}: {field}: {err['msg']}{more}") from None


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
