"""Per-stage search spaces and their unit-cube encoding.

A pipeline configuration is a list with one ``dict`` per stage (param name ->
python value).  The tuners model configurations on the unit cube ``[0, 1]^d``;
this module owns the encoding in both directions.

Exactness matters more than elegance here: the pipeline's cache keys are
computed from the *python values* of a stage's params, so a value that went
through ``to_unit``/``from_unit`` and came back as ``0.30000000000000004``
instead of ``0.3`` silently misses the cache.  Hence:

* ints decode to ``int``, categoricals decode to the choice object itself;
* ints and categoricals round-trip exactly (``from_unit(to_unit(v)) == v``);
* floats are only decoded for *new* values; a reused prefix is never decoded,
  its stored dicts are copied (see ``tuners.bo``).

Encoding per parameter (``dims`` columns each):

* ``FloatParam``: 1 column, linear or log scale between ``low`` and ``high``.
* ``IntParam``: 1 column split into ``high - low + 1`` equal-width bins (in log
  space for ``log=True``), so uniform sampling of the cube is uniform over the
  integers; ``to_unit`` returns the bin centre.
* ``CategoricalParam``: one-hot, ``len(choices)`` columns; decoding takes the
  argmax (first on ties), so uniform sampling is uniform over the choices and a
  relaxed optimizer can move continuously between choices.

Conditional parameters: a spec may say ``when: {mode: [hypergradient]}``
(another categorical param of the same stage and the choices under which it
applies). The tuners still model every column; an inactive param decodes to
a fixed canonical value (``low`` / the first choice), so configurations that
differ only in inactive params are the same configuration (same prefix, same
cache), and :meth:`SearchSpace.active_params` drops it before the pipeline
sees it (an adamw optimizer has no ``hypergrad_lr``).
"""

from __future__ import annotations

import hashlib
import json
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "Param",
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "SearchSpace",
    "prefix_key",
]

_JSON_SCALARS = (str, int, float, bool, type(None))


def prefix_key(params: Sequence[Mapping[str, Any]]) -> str:
    """Canonical string of a (prefix of a) configuration, for exact-equality lookups.

    ``json.dumps`` writes floats with ``repr`` (shortest exact round trip) and
    keeps ``1`` and ``1.0`` apart, which mirrors how content-hashed cache keys
    see the values.
    """
    return json.dumps([dict(sorted(p.items())) for p in params], sort_keys=True)


class Param(ABC):
    """One hyperparameter of one stage.  Subclasses are small frozen dataclasses."""

    name: str

    @property
    @abstractmethod
    def dims(self) -> int:
        """Number of unit-cube columns this parameter occupies."""

    @abstractmethod
    def to_unit(self, value: Any) -> list[float]:
        """Encode a python value into ``dims`` numbers in ``[0, 1]``."""

    @abstractmethod
    def from_unit(self, u: Sequence[float]) -> Any:
        """Decode ``dims`` numbers (any reals; clipped) into a valid python value."""

    @abstractmethod
    def validate(self, value: Any) -> None:
        """Raise ``ValueError`` if ``value`` is not a member of this parameter's domain."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """JSON-able description (the ``search:`` config format)."""


def _clip01(x: float) -> float:
    return min(1.0, max(0.0, float(x)))


@dataclass(frozen=True)
class FloatParam(Param):
    """A real-valued parameter in ``[low, high]``, optionally on a log scale."""

    name: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.low) and math.isfinite(self.high)) or self.low >= self.high:
            raise ValueError(f"{self.name}: need finite low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"{self.name}: log=True needs low > 0, got {self.low}")

    @property
    def dims(self) -> int:
        return 1

    def _t(self, v: float) -> float:
        return math.log(v) if self.log else float(v)

    def to_unit(self, value: Any) -> list[float]:
        lo, hi = self._t(self.low), self._t(self.high)
        return [_clip01((self._t(value) - lo) / (hi - lo))]

    def from_unit(self, u: Sequence[float]) -> float:
        x = _clip01(u[0])
        if x == 0.0 or x == 1.0:  # bounds exactly, even where exp(log(v)) != v
            return float(self.low if x == 0.0 else self.high)
        lo, hi = self._t(self.low), self._t(self.high)
        v = lo + x * (hi - lo)
        v = math.exp(v) if self.log else v
        return float(min(self.high, max(self.low, v)))

    def validate(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{self.name}: expected a number, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}: {value!r} outside [{self.low}, {self.high}]")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntParam(Param):
    """An integer parameter in ``[low, high]`` (inclusive), optionally log-spaced."""

    name: str
    low: int
    high: int
    log: bool = False

    def __post_init__(self) -> None:
        for v in (self.low, self.high):
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{self.name}: bounds must be ints, got {v!r}")
        if self.low > self.high:
            raise ValueError(f"{self.name}: need low <= high, got {self.low}, {self.high}")
        if self.log and self.low < 1:
            raise ValueError(f"{self.name}: log=True needs low >= 1, got {self.low}")

    @property
    def dims(self) -> int:
        return 1

    def _edges(self) -> tuple[float, float]:
        lo, hi = self.low - 0.5, self.high + 0.5
        return (math.log(lo), math.log(hi)) if self.log else (lo, hi)

    def to_unit(self, value: Any) -> list[float]:
        lo, hi = self._edges()
        t = math.log(value) if self.log else float(value)
        return [_clip01((t - lo) / (hi - lo))]

    def from_unit(self, u: Sequence[float]) -> int:
        lo, hi = self._edges()
        t = lo + _clip01(u[0]) * (hi - lo)
        v = math.exp(t) if self.log else t
        return int(min(self.high, max(self.low, round(v))))

    def validate(self, value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{self.name}: expected an int, got {value!r}")
        if not self.low <= value <= self.high:
            raise ValueError(f"{self.name}: {value!r} outside [{self.low}, {self.high}]")

    def to_dict(self) -> dict[str, Any]:
        return {"type": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class CategoricalParam(Param):
    """A choice among JSON scalars (str, int, float, bool, None), one-hot encoded."""

    name: str
    choices: tuple[Any, ...]

    def __post_init__(self) -> None:
        choices = tuple(self.choices)
        object.__setattr__(self, "choices", choices)
        if not choices:
            raise ValueError(f"{self.name}: choices must be non-empty")
        for c in choices:
            if not isinstance(c, _JSON_SCALARS):
                raise ValueError(f"{self.name}: choice {c!r} is not a JSON scalar")
        keys = [json.dumps(c) for c in choices]
        if len(set(keys)) != len(keys):
            raise ValueError(f"{self.name}: duplicate choices")

    @property
    def dims(self) -> int:
        return len(self.choices)

    def _index(self, value: Any) -> int:
        key = json.dumps(value) if isinstance(value, _JSON_SCALARS) else None
        for i, c in enumerate(self.choices):
            if json.dumps(c) == key:
                return i
        raise ValueError(f"{self.name}: {value!r} not in {list(self.choices)!r}")

    def to_unit(self, value: Any) -> list[float]:
        out = [0.0] * len(self.choices)
        out[self._index(value)] = 1.0
        return out

    def from_unit(self, u: Sequence[float]) -> Any:
        return self.choices[int(np.argmax(np.asarray(u, dtype=float)))]

    def validate(self, value: Any) -> None:
        self._index(value)

    def to_dict(self) -> dict[str, Any]:
        return {"type": "categorical", "choices": list(self.choices)}


_ALLOWED_KEYS = {
    "float": {"type", "low", "high", "log", "when"},
    "int": {"type", "low", "high", "log", "when"},
    "categorical": {"type", "choices", "when"},
}

#: (parent param name, the parent's choices under which the param is active)
Condition = tuple[str, tuple[Any, ...]]


def canonical_value(p: Param) -> Any:
    """The fixed value an inactive parameter takes (``low`` or the first choice)."""
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    return p.low  # type: ignore[attr-defined]


def _condition_from_spec(spec: Any, stage: Sequence[Param], where: str) -> Condition:
    """Parse ``when: {parent: value | [values]}`` against the stage's categorical params."""
    if not isinstance(spec, Mapping) or len(spec) != 1:
        raise ValueError(f"{where}: expected one entry {{param: value or [values]}}, got {spec!r}")
    (parent, values), = spec.items()
    by_name = {p.name: p for p in stage}
    target = by_name.get(parent)
    if not isinstance(target, CategoricalParam):
        raise ValueError(f"{where}.{parent}: must name a categorical param of the same stage")
    values = tuple(values) if isinstance(values, list | tuple) else (values,)
    if not values:
        raise ValueError(f"{where}.{parent}: expected at least one value")
    for v in values:
        try:
            target.validate(v)
        except ValueError as err:
            raise ValueError(f"{where}.{parent}: {err}") from None
    return parent, values


def _param_from_spec(name: str, spec: Any, where: str) -> Param:
    """Build one ``Param`` from its config dict; errors name the offending field."""
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping with a 'type', got {spec!r}")
    kind = spec.get("type")
    if kind not in _ALLOWED_KEYS:
        raise ValueError(f"{where}.type: expected one of float, int, categorical, got {kind!r}")
    for key in spec:
        if key not in _ALLOWED_KEYS[kind]:
            raise ValueError(f"{where}.{key}: unknown field for a {kind} parameter")
    if kind == "categorical":
        choices = spec.get("choices")
        if not isinstance(choices, list | tuple) or not choices:
            raise ValueError(f"{where}.choices: expected a non-empty list, got {choices!r}")
        for i, c in enumerate(choices):
            if not isinstance(c, _JSON_SCALARS):
                raise ValueError(f"{where}.choices[{i}]: {c!r} is not a str/int/float/bool/null")
        if len({json.dumps(c) for c in choices}) != len(choices):
            raise ValueError(f"{where}.choices: duplicate choices")
        return CategoricalParam(name, tuple(choices))
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ValueError(f"{where}.log: expected true/false, got {log!r}")
    bounds = {}
    for key in ("low", "high"):
        if key not in spec:
            raise ValueError(f"{where}.{key}: missing")
        v = spec[key]
        if kind == "int":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{where}.{key}: expected an int, got {v!r}")
        elif isinstance(v, bool) or not isinstance(v, int | float) or not math.isfinite(v):
            raise ValueError(f"{where}.{key}: expected a finite number, got {v!r}")
        bounds[key] = v
    low, high = bounds["low"], bounds["high"]
    if kind == "float" and not low < high:
        raise ValueError(f"{where}.high: must be greater than low ({low}), got {high}")
    if kind == "int" and not low <= high:
        raise ValueError(f"{where}.high: must be >= low ({low}), got {high}")
    if log and (low <= 0 if kind == "float" else low < 1):
        raise ValueError(f"{where}.low: log=true needs a positive low, got {low}")
    if kind == "float":
        return FloatParam(name, float(low), float(high), log)
    return IntParam(name, int(low), int(high), log)


class SearchSpace:
    """The params of each tunable stage, in pipeline order, plus the unit-cube encoding.

    ``stages[k]`` is the list of params of stage ``k``; ``stage_names[k]`` its
    name (defaults to ``stage0``, ``stage1``, ...).  Column ``j`` of the unit
    cube belongs to exactly one stage: ``stage_slices[k]`` are stage ``k``'s
    columns, which is what the per-stage cost models look at.
    """

    def __init__(
        self,
        stages: Sequence[Sequence[Param]],
        stage_names: Sequence[str] | None = None,
        conditions: Sequence[Mapping[str, Condition]] | None = None,
    ) -> None:
        self.stages: tuple[tuple[Param, ...], ...] = tuple(tuple(s) for s in stages)
        if not self.stages:
            raise ValueError("a search space needs at least one stage")
        names = list(stage_names) if stage_names is not None else None
        if names is None:
            names = [f"stage{k}" for k in range(len(self.stages))]
        if len(names) != len(self.stages) or len(set(names)) != len(names):
            raise ValueError("stage_names must be unique and one per stage")
        self.stage_names: tuple[str, ...] = tuple(names)
        slices, start = [], 0
        for k, stage in enumerate(self.stages):
            if not stage:
                raise ValueError(f"stage {self.stage_names[k]!r} has no parameters")
            seen = set()
            for p in stage:
                if not isinstance(p, Param):
                    raise ValueError(f"stage {self.stage_names[k]!r}: {p!r} is not a Param")
                if p.name in seen:
                    raise ValueError(f"stage {self.stage_names[k]!r}: duplicate param {p.name!r}")
                seen.add(p.name)
            width = sum(p.dims for p in stage)
            slices.append(slice(start, start + width))
            start += width
        self.stage_slices: tuple[slice, ...] = tuple(slices)
        self.dim: int = start
        conds = list(conditions) if conditions is not None else [{} for _ in self.stages]
        if len(conds) != len(self.stages):
            raise ValueError("conditions must be one mapping per stage")
        #: per stage: param name -> (parent, active choices) for conditional params
        self.conditions: tuple[dict[str, Condition], ...] = tuple(dict(c) for c in conds)
        for k, cond in enumerate(self.conditions):
            names_k = {p.name for p in self.stages[k]}
            for name, (parent, _) in cond.items():
                if name not in names_k or parent not in names_k or parent == name:
                    raise ValueError(
                        f"stage {self.stage_names[k]!r}: bad condition {name!r} on {parent!r}"
                    )
                if parent in cond:
                    raise ValueError(
                        f"stage {self.stage_names[k]!r}: {name!r} depends on {parent!r}, "
                        "which is itself conditional (one level only)"
                    )
        # decode-time lookups (project() canonicalizes every candidate row)
        self._canonical = tuple(
            {n: canonical_value(p) for p in stage if (n := p.name) in self.conditions[k]}
            for k, stage in enumerate(self.stages)
        )
        self._active_keys = tuple(
            {n: (parent, frozenset(json.dumps(v) for v in values))
             for n, (parent, values) in cond.items()}
            for cond in self.conditions
        )

    # ------------------------------------------------------------------ building
    @classmethod
    def from_config(
        cls, search: Mapping[str, Any], stage_order: Sequence[str] | None = None
    ) -> SearchSpace:
        """Build from a pipeline config's ``search:`` section.

        ``search`` maps stage name -> {param name -> spec}; a spec is
        ``{"type": "float", "low", "high", "log"?}``, ``{"type": "int", "low",
        "high", "log"?}`` or ``{"type": "categorical", "choices": [...]}``.
        Only stages present in ``search`` become tuner stages, in the order of
        ``stage_order`` (the pipeline's stage order; defaults to ``search``'s
        own order).  Invalid specs raise ``ValueError`` whose message starts
        with the dotted path of the field, e.g. ``search.target_finetune.lr.low``.
        """
        if not isinstance(search, Mapping) or not search:
            raise ValueError("search: expected a non-empty mapping of stage -> params")
        order = list(stage_order) if stage_order is not None else list(search)
        for stage in search:
            if stage not in order:
                raise ValueError(f"search.{stage}: unknown stage, expected one of {order}")
        stages, names, conditions = [], [], []
        for stage in order:
            if stage not in search:
                continue
            spec = search[stage]
            if not isinstance(spec, Mapping) or not spec:
                raise ValueError(f"search.{stage}: expected a non-empty mapping of param -> spec")
            params = []
            for pname, pspec in spec.items():
                if not isinstance(pname, str) or not pname:
                    raise ValueError(f"search.{stage}: parameter names must be non-empty strings")
                params.append(_param_from_spec(pname, pspec, f"search.{stage}.{pname}"))
            cond: dict[str, Condition] = {}
            for pname, pspec in spec.items():
                if "when" in pspec:
                    where = f"search.{stage}.{pname}.when"
                    cond[pname] = _condition_from_spec(pspec["when"], params, where)
            for pname, (parent, _) in cond.items():
                if parent in cond:
                    raise ValueError(f"search.{stage}.{pname}.when.{parent}: {parent} is itself "
                                     "conditional (one level only)")
            stages.append(params)
            names.append(stage)
            conditions.append(cond)
        return cls(stages, names, conditions)

    def to_config(self) -> dict[str, dict[str, dict[str, Any]]]:
        """Inverse of ``from_config`` (JSON-able)."""
        out: dict[str, dict[str, dict[str, Any]]] = {}
        for k, (name, stage) in enumerate(zip(self.stage_names, self.stages, strict=True)):
            out[name] = {}
            for p in stage:
                d = p.to_dict()
                if p.name in self.conditions[k]:
                    parent, values = self.conditions[k][p.name]
                    d["when"] = {parent: list(values)}
                out[name][p.name] = d
        return out

    def fingerprint(self) -> str:
        """Short hash identifying the space, stored in tuner state to catch mismatches."""
        blob = json.dumps(self.to_config(), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    # ------------------------------------------------------------------ basics
    @property
    def n_stages(self) -> int:
        return len(self.stages)

    @property
    def n_params(self) -> int:
        return sum(len(s) for s in self.stages)

    def __repr__(self) -> str:
        inner = ", ".join(f"{n}: {[p.name for p in s]}" for n, s in zip(self.stage_names, self.stages, strict=True))
        return f"SearchSpace({inner})"

    def validate(self, config: Sequence[Mapping[str, Any]]) -> None:
        """Raise ``ValueError`` unless ``config`` is one valid dict per stage (or a prefix)."""
        if len(config) > self.n_stages:
            raise ValueError(f"config has {len(config)} stages, space has {self.n_stages}")
        for k, params in enumerate(config):
            expected = {p.name for p in self.stages[k]}
            if set(params) != expected:
                raise ValueError(
                    f"stage {self.stage_names[k]!r}: params {sorted(params)} != {sorted(expected)}"
                )
            for p in self.stages[k]:
                p.validate(params[p.name])

    # ------------------------------------------------------------------ encoding
    def stage_to_unit(self, k: int, params: Mapping[str, Any]) -> list[float]:
        """Encode stage ``k``'s params dict into its unit-cube columns."""
        out: list[float] = []
        for p in self.stages[k]:
            out.extend(p.to_unit(params[p.name]))
        return out

    def stage_from_unit(self, k: int, u: Sequence[float]) -> dict[str, Any]:
        """Decode stage ``k``'s columns into a params dict of valid python values
        (inactive conditional params at their canonical value)."""
        out, i = {}, 0
        for p in self.stages[k]:
            out[p.name] = p.from_unit(u[i : i + p.dims])
            i += p.dims
        return self.canonicalize(k, out)

    def is_active(self, k: int, name: str, params: Mapping[str, Any]) -> bool:
        """Whether stage ``k``'s param ``name`` applies given the stage's other values."""
        cond = self._active_keys[k].get(name)
        if cond is None:
            return True
        parent, keys = cond
        return json.dumps(params[parent]) in keys

    def canonicalize(self, k: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stage ``k``'s params with every inactive param set to its canonical value."""
        fixed = self._canonical[k]
        return {
            n: v if n not in fixed or self.is_active(k, n, params) else fixed[n]
            for n, v in params.items()
        }

    def active_params(self, k: int, params: Mapping[str, Any]) -> dict[str, Any]:
        """Stage ``k``'s params without the inactive ones: what the pipeline is given."""
        return {n: v for n, v in params.items() if self.is_active(k, n, params)}

    def to_unit(self, config: Sequence[Mapping[str, Any]]) -> list[float]:
        """Encode a full configuration (one dict per stage) into ``dim`` numbers."""
        if len(config) != self.n_stages:
            raise ValueError(f"config has {len(config)} stages, space has {self.n_stages}")
        out: list[float] = []
        for k, params in enumerate(config):
            out.extend(self.stage_to_unit(k, params))
        return out

    def from_unit(self, u: Sequence[float]) -> list[dict[str, Any]]:
        """Decode ``dim`` numbers into a full configuration (rounding ints/categoricals)."""
        u = [float(x) for x in u]
        if len(u) != self.dim:
            raise ValueError(f"expected {self.dim} numbers, got {len(u)}")
        return [self.stage_from_unit(k, u[s]) for k, s in enumerate(self.stage_slices)]

    def project(self, u: Sequence[float]) -> list[float]:
        """Round a relaxed point to the encoding of the nearest valid configuration."""
        return self.to_unit(self.from_unit(u))

    def sample(self, rng: np.random.Generator) -> list[dict[str, Any]]:
        """A uniformly random configuration (uniform over ints and choices too)."""
        return self.from_unit(rng.random(self.dim).tolist())
