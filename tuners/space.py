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

The ``search:`` config format is typed and checked in one place,
``tuners.search_spec`` (pydantic, no torch: a config is validated without loading
the tuners); :meth:`SearchSpace.from_spec` builds a space from a checked section
and checks nothing again. The ``Param`` dataclasses only encode and sample.
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

from tuners.search_spec import (
    JSON_SCALARS,
    Condition,
    ParamSpec,
    SpecError,
    check_stage_names,
    parse_search,
)

__all__ = [
    "Param",
    "FloatParam",
    "IntParam",
    "CategoricalParam",
    "SearchSpace",
    "SpecError",
    "prefix_key",
]

def prefix_key(params: Sequence[Mapping[str, Any]]) -> str:
    """Canonical string of a (prefix of a) configuration, for exact-equality lookups.

    ``json.dumps`` writes floats with ``repr`` (shortest exact round trip) and
    keeps ``1`` and ``1.0`` apart, which mirrors how content-hashed cache keys
    see the values.
    """
    return json.dumps([dict(sorted(p.items())) for p in params], sort_keys=True)


class Param(ABC):
    """One hyperparameter of one stage.  Subclasses are small frozen dataclasses.

    They encode, decode and sample; they do not check their own bounds: a config's
    params come from a validated :data:`ParamSpec` (``spec.param(name)``), and code
    that builds one directly states valid values.
    """

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
        object.__setattr__(self, "choices", tuple(self.choices))

    @property
    def dims(self) -> int:
        return len(self.choices)

    def _index(self, value: Any) -> int:
        key = json.dumps(value) if isinstance(value, JSON_SCALARS) else None
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


def canonical_value(p: Param) -> Any:
    """The fixed value an inactive parameter takes (``low`` or the first choice)."""
    if isinstance(p, CategoricalParam):
        return p.choices[0]
    return p.low  # type: ignore[attr-defined]


def _param(name: str, spec: ParamSpec) -> Param:
    """The ``Param`` of a checked spec."""
    if spec.type == "categorical":
        return CategoricalParam(name, tuple(spec.choices))
    if spec.type == "int":
        return IntParam(name, int(spec.low), int(spec.high), spec.log)
    return FloatParam(name, float(spec.low), float(spec.high), spec.log)


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
        #: per stage: param name -> (parent, active choices) for conditional params; the
        #: rules on them (a categorical parent of the same stage, one level) are the spec's
        self.conditions: tuple[dict[str, Condition], ...] = tuple(dict(c) for c in conds)
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
    def from_spec(
        cls, search: Mapping[str, Mapping[str, ParamSpec]], stage_order: Sequence[str] | None = None
    ) -> SearchSpace:
        """Build from a checked ``search:`` section (``tuners.search_spec``: a config's
        ``search``, or ``parse_search``'s result).

        Only stages present in ``search`` become tuner stages, in the order of
        ``stage_order`` (the pipeline's stage order; defaults to ``search``'s own
        order). Raises ``SpecError`` (``search: ...``, ``search.<stage>: ...``) for an
        empty section or a stage not in ``stage_order``.
        """
        if not search:
            raise SpecError(("search",), "expected a non-empty mapping of stage -> params")
        order = list(stage_order) if stage_order is not None else list(search)
        check_stage_names(search, order)
        names = [stage for stage in order if stage in search]
        return cls([[_param(n, spec) for n, spec in search[s].items()] for s in names], names,
                   [{n: c for n, spec in search[s].items() if (c := spec.condition()) is not None}
                    for s in names])

    @classmethod
    def from_config(
        cls, search: Mapping[str, Any], stage_order: Sequence[str] | None = None
    ) -> SearchSpace:
        """Build from a pipeline config's ``search:`` section, as plain data or typed.

        ``search`` maps stage name -> {param name -> spec}; a spec is
        ``{"type": "float", "low", "high", "log"?}``, ``{"type": "int", "low",
        "high", "log"?}`` or ``{"type": "categorical", "choices": [...]}``, each
        with an optional ``when: {param: value or [values]}`` (see
        ``tuners.search_spec``). Invalid specs raise ``SpecError`` (a ``ValueError``)
        whose message starts with the dotted path of the field, e.g.
        ``search.target_finetune.lr.low``.
        """
        return cls.from_spec(parse_search(search), stage_order)

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
