"""The `search:` section of a pipeline config, typed: every rule about it in one place.

    search:
      target_finetune:                       # a stage
        optimizer.mode: {type: categorical, choices: [adamw, hypergradient]}
        optimizer.lr: {type: float, low: 1.0e-4, high: 3.0e-3, log: true}
        optimizer.hypergrad_lr:              # only when the mode adapts the lr
          {type: float, low: 1.0e-7, high: 1.0e-5, log: true, when: {optimizer.mode: [hypergradient]}}

One pydantic model per parameter type (`FloatSpec`, `IntSpec`, `CategoricalSpec`,
told apart by `type`, unknown keys refused) holds the rules about one parameter;
`StageSpec` the rules about a stage's parameters together (at least one; a `when:`
names a categorical of the same stage, under some of its choices, one level deep).
`flows.config` adds what only the pipeline knows (stage names, and that each dotted
name is a setting of its stage's params model); `tuners.SearchSpace.from_spec`
builds the unit-cube space from a section checked here and checks nothing again.

A spec dumps exactly the keys it was written with (`type` always), so a config's
section comes back from `model_dump(mode="json")` as written: studies store it so.

Errors are `SpecError` (a ValueError) whose message starts with the dotted path of
the field, e.g. `search.target_finetune.optimizer.lr.low: ...`. No imports beyond
pydantic: the config is validated without loading the tuners (torch, botorch).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

__all__ = ["JSON_SCALARS", "SPEC_TYPES", "CategoricalSpec", "Condition", "FloatSpec", "IntSpec",
           "ParamSpec", "SearchSpec", "SpecError", "StageSpec", "check_stage_names", "dotted",
           "parse_search", "spec_error", "spec_error_line"]

SPEC_TYPES = ("float", "int", "categorical")
#: the values a categorical choice may take (JSON scalars)
JSON_SCALARS = (str, int, float, bool, type(None))
#: (parent param name, the parent's choices under which the param is active)
Condition = tuple[str, tuple[Any, ...]]
Loc = tuple[str | int, ...]


def dotted(loc: Loc) -> str:
    """`("search", "t", "mode", "choices", 1)` -> `search.t.mode.choices[1]`."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class SpecError(ValueError):
    """A broken `search:` rule: `loc` says where (below the validator that raised it,
    when raised in one), `problem` what; `str()` is `"<dotted loc>: <problem>"`."""

    def __init__(self, loc: Loc, problem: str) -> None:
        super().__init__(f"{dotted(loc)}: {problem}" if loc else problem)
        self.loc, self.problem = tuple(loc), problem


# ---------------------------------------------------------------- one parameter


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    #: {parent: value or [values]}: active only under those choices of the parent
    when: dict[str, Any] | None = None

    @field_validator("when")
    @classmethod
    def _one_condition(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and len(v) != 1:
            raise SpecError((), f"expected one entry {{param: value or [values]}}, got {_show(v)}")
        return v

    @model_serializer(mode="wrap")
    def _as_written(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        out = {k: v for k, v in data.items() if k == "type" or k in self.model_fields_set}
        if "when" in out:
            out["when"] = out.pop("when")  # last, as the examples write it
        return out

    def __eq__(self, other: object) -> bool:
        """A spec also equals its JSON form (the `search:` YAML it was read from)."""
        if isinstance(other, Mapping):
            return self.model_dump(mode="json") == dict(other)
        return super().__eq__(other)

    def condition(self) -> Condition | None:
        """`when:` as (parent, values), or None."""
        if self.when is None:
            return None
        ((parent, values),) = self.when.items()
        return parent, tuple(values) if isinstance(values, list | tuple) else (values,)


class FloatSpec(_Spec):
    """`{type: float, low, high, log?}`: finite numbers, low < high; log needs low > 0."""

    type: Literal["float"] = "float"
    low: float
    high: float
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> FloatSpec:
        if not self.low < self.high:
            raise SpecError(("high",), f"must be greater than low ({self.low}), got {self.high}")
        if self.log and self.low <= 0:
            raise SpecError(("low",), f"log=true needs a positive low, got {self.low}")
        return self


class IntSpec(_Spec):
    """`{type: int, low, high, log?}`: integers, low <= high; log needs low >= 1."""

    type: Literal["int"] = "int"
    low: int
    high: int
    log: bool = False

    @model_validator(mode="after")
    def _range(self) -> IntSpec:
        if not self.low <= self.high:
            raise SpecError(("high",), f"must be >= low ({self.low}), got {self.high}")
        if self.log and self.low < 1:
            raise SpecError(("low",), f"log=true needs a positive low, got {self.low}")
        return self


class CategoricalSpec(_Spec):
    """`{type: categorical, choices: [...]}`: at least one, distinct JSON scalars."""

    type: Literal["categorical"] = "categorical"
    choices: list[Any]

    @field_validator("choices")
    @classmethod
    def _scalars(cls, v: list[Any]) -> list[Any]:
        if not v:
            raise SpecError((), "expected a non-empty list")
        for i, c in enumerate(v):
            if not isinstance(c, JSON_SCALARS):
                raise SpecError((i,), f"{_show(c)} is not a str/int/float/bool/null")
        if len({json.dumps(c) for c in v}) != len(v):
            raise SpecError((), "duplicate choices")
        return v

    def has(self, value: Any) -> bool:
        """Whether value is one of the choices (1, 1.0 and true are different choices)."""
        return isinstance(value, JSON_SCALARS) and json.dumps(value) in {
            json.dumps(c) for c in self.choices}


#: one parameter's spec, told apart by its `type`
ParamSpec = Annotated[FloatSpec | IntSpec | CategoricalSpec, Field(discriminator="type")]


# ---------------------------------------------------------------- a stage, the section


def _check_stage(params: dict[str, ParamSpec]) -> dict[str, ParamSpec]:
    """At least one param; each `when:` names a categorical param of the same stage
    (not conditional itself) and some of its choices."""
    if not params:
        raise SpecError((), "no parameters (expected a non-empty mapping of param -> spec)")
    for name, spec in params.items():
        cond = spec.condition()
        if cond is None:
            continue
        parent, values = cond
        where = (name, "when", parent)
        target = params.get(parent)
        if parent == name or not isinstance(target, CategoricalSpec):
            raise SpecError(where, "must name a categorical param of the same stage")
        if not values:
            raise SpecError(where, "expected at least one value")
        for v in values:
            if not target.has(v):
                raise SpecError(where, f"{_show(v)} is not one of its choices {target.choices!r}")
        if target.when is not None:
            raise SpecError(where, f"{parent} is itself conditional (one level only)")
    return params


ParamName = Annotated[str, StringConstraints(min_length=1)]
#: a stage's params: dotted name (`optimizer.lr`) -> spec, in the tuner's column order
StageSpec = Annotated[dict[ParamName, ParamSpec], AfterValidator(_check_stage)]
#: the `search:` section: stage name -> its params
SearchSpec = dict[str, StageSpec]
_SEARCH: TypeAdapter[SearchSpec] = TypeAdapter(SearchSpec)


def check_stage_names(search: Mapping[str, Any], stages: list[str] | tuple[str, ...]) -> None:
    """Every stage of the section is one of `stages` (the pipeline's)."""
    for stage in search:
        if stage not in stages:
            raise SpecError(("search", stage), f"unknown stage, expected one of {', '.join(stages)}")


def parse_search(search: Any) -> SearchSpec:
    """A `search:` section (plain data, or specs already typed) as typed specs.

    Strict, as `flows.config` is: no string or bool is read as a number, no number
    as a bool. Raises `SpecError` naming the first problem's field (`search.t.lr.low`).
    """
    try:
        return _SEARCH.validate_python(search, strict=True)
    except ValidationError as e:
        loc, problem = spec_error(e.errors()[0], ("search",))
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise SpecError(loc, problem + more) from None


def spec_error(err: Mapping[str, Any], prefix: Loc = ()) -> tuple[Loc, str]:
    """Where and what one pydantic error (an item of `ValidationError.errors()`) in a
    `search:` section is: the field's loc from `search` on, and a plain message.

    `prefix + err["loc"]` starts at `search`. A `SpecError` raised in a validator
    extends the loc; the union's tag and pydantic's `[key]` are dropped.
    """
    loc = [*prefix, *err["loc"]]
    problem, kind = err["msg"], err["type"]
    error = (err.get("ctx") or {}).get("error")
    tag = loc[3] if len(loc) > 3 and loc[3] in SPEC_TYPES else None  # search.stage.name.<tag>
    if tag is not None:
        del loc[3]
    if isinstance(error, SpecError):
        loc += error.loc
        problem = error.problem
    elif kind == "value_error" and error is not None:
        problem = str(error)
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        loc.append("type")
        got = f", got {_show(err['input'].get('type'))}" if kind == "union_tag_invalid" else ""
        problem = f"expected one of {', '.join(SPEC_TYPES)}{got}"
    elif kind == "model_attributes_type" and len(loc) == 3:
        problem = (f"expected a mapping with a 'type' ({', '.join(SPEC_TYPES)}), "
                   f"got {_show(err['input'])}")
    elif kind == "extra_forbidden" and tag is not None:
        problem = f"unknown field for {'an' if tag == 'int' else 'a'} {tag} parameter"
    elif kind == "missing":
        problem = "missing"
    elif kind == "string_too_short" and loc[-1:] == ["[key]"]:
        problem = "a parameter name must not be empty"
    return tuple(p for p in loc if p != "[key]"), problem


def spec_error_line(err: Mapping[str, Any], prefix: Loc = ()) -> str:
    """`spec_error` as one `"<dotted loc>: <problem>"` line."""
    return str(SpecError(*spec_error(err, prefix)))
