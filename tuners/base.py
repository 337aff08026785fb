"""The ask/tell interface every tuner implements, and the types it speaks.

Modelled on Optuna's ``BaseSampler``: one abstract class, each algorithm a
plugin registered under a name (``make_tuner``).  The caller (the Prefect tune
flow, or ``tuners.simulate``) owns the loop::

    cand = tuner.ask(cache_view)      # before dispatching a run
    ...run cand.params...
    tuner.tell(cand, objective, stage_costs, cached)   # when the run finished

``ask`` may be called several times before the matching ``tell`` calls (parallel
workers); outstanding candidates are *pending* and every tuner returns
candidates distinct from pending and already evaluated ones.

The base class owns everything that is not the algorithm: the observation
log, the budget accounting that cost cooling needs, the shared random warm-up
(the first ``warmup`` asks of every tuner with the same seed propose the same
configurations, so comparisons start from the same incumbent) and JSON state.
"""

from __future__ import annotations

import copy
import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import numpy as np

from tuners.space import SearchSpace, prefix_key

__all__ = [
    "Candidate",
    "CachedPrefix",
    "CacheView",
    "Observation",
    "Tuner",
    "make_tuner",
    "register_tuner",
    "available_tuners",
]

STATE_VERSION = 1


@dataclass
class Candidate:
    """A configuration proposed by ``ask``.

    Attributes:
        params: one dict per stage, param name -> exact python value.  The
            first ``prefix_depth`` dicts are copies of stored values (never
            decoded from the unit cube), so cache keys computed from them match.
        prefix_depth: how many leading stages the tuner *intends* to load from
            the cache (0 = compute everything).  Informational: the run itself
            decides hits from the store, and reports them in ``tell``.
        id: ask counter of the tuner (0, 1, 2, ...); unique per tuner.
        source: ``"warmup"``, ``"random"``, ``"bo"``, ``"tpe"``.
        acq_value: log acquisition value (BO tuners), else ``None``.
        eta: cost-cooling exponent used for this ask (BO tuners), else ``None``.
        expected_cost: the model's cost estimate ``1 / E[1/C]`` (BO tuners
            with a cost model), else ``None``.
    """

    params: list[dict[str, Any]]
    prefix_depth: int = 0
    id: int = -1
    source: str = "bo"
    acq_value: float | None = None
    eta: float | None = None
    expected_cost: float | None = None

    def key(self) -> str:
        return prefix_key(self.params)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Candidate:
        return cls(**{k: copy.deepcopy(v) for k, v in d.items()})


@dataclass(frozen=True)
class CachedPrefix:
    """A prefix ``(x_1..x_d)`` whose stage outputs are all present in the cache.

    ``load_costs[k]`` is the measured time to load stage ``k``'s cached output
    for this prefix (``None`` when unknown; the tuner then falls back to the
    mean load time it has been told, or a small fraction of the stage's mean
    compute cost).
    """

    params: tuple[Mapping[str, Any], ...]
    load_costs: tuple[float | None, ...]

    @property
    def depth(self) -> int:
        return len(self.params)

    def key(self) -> str:
        return prefix_key(self.params)


@dataclass
class CacheView:
    """What the cache holds, as the tuner needs it: cached prefixes and their load costs.

    Build it from the store before each ``ask``: for every configuration run so
    far, the leading stages whose outputs are still in the store form a cached
    prefix (``from_runs`` expands them into all cached prefixes, de-duplicated).
    ``params`` are per *tuned* stage, in the ``SearchSpace``'s stage order, with
    exactly the tuned params, holding the exact python values the runs used
    (as stored in the run records): the tuner pins reused prefixes to them.
    Prefixes that do not fit the space are ignored.
    """

    prefixes: list[CachedPrefix] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._index: dict[str, CachedPrefix] = {p.key(): p for p in self.prefixes}

    @classmethod
    def empty(cls) -> CacheView:
        """No cache (cost-only tuning, or a cold store)."""
        return cls([])

    @classmethod
    def from_runs(
        cls,
        runs: Iterable[
            tuple[Sequence[Mapping[str, Any]], Sequence[bool], Sequence[float | None] | None]
        ],
    ) -> CacheView:
        """Build from per-run records ``(params, in_store, load_seconds)``.

        ``params``: the run's config (one dict per tuned stage); ``in_store[k]``:
        whether stage ``k``'s output for this run's prefix is still in the store;
        ``load_seconds[k]``: measured load time of that output (``None`` or a
        missing list when never measured).  A prefix of depth ``d`` counts as
        cached when stages ``0..d-1`` are all in the store.  Several runs
        sharing a prefix are merged (first known load time wins).
        """
        merged: dict[str, tuple[tuple[dict[str, Any], ...], list[float | None]]] = {}
        for params, in_store, loads in runs:
            depth = 0
            while depth < min(len(params), len(in_store)) and in_store[depth]:
                depth += 1
            loads = list(loads) if loads is not None else []
            for d in range(1, depth + 1):
                pre = tuple(dict(p) for p in params[:d])
                key = prefix_key(pre)
                if key not in merged:
                    merged[key] = (pre, [None] * d)
                costs = merged[key][1]
                for k in range(d):
                    if costs[k] is None and k < len(loads) and loads[k] is not None:
                        costs[k] = float(loads[k])
        return cls([CachedPrefix(pre, tuple(c)) for pre, c in merged.values()])

    def __len__(self) -> int:
        return len(self.prefixes)

    def get(self, params: Sequence[Mapping[str, Any]]) -> CachedPrefix | None:
        """The cached prefix equal to ``params``, if any."""
        return self._index.get(prefix_key(params))

    def cached_depth(self, params: Sequence[Mapping[str, Any]]) -> int:
        """Length of the longest leading part of ``params`` that is cached."""
        depth = 0
        for d in range(1, len(params) + 1):
            if prefix_key(params[:d]) in self._index:
                depth = d
            else:
                break
        return depth


@dataclass
class Observation:
    """One finished run, as told.  ``objective`` is ``None`` for a failed run."""

    id: int
    params: list[dict[str, Any]]
    objective: float | None
    stage_costs: list[float]
    cached: list[bool]
    prefix_depth: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Observation:
        return cls(**{k: copy.deepcopy(v) for k, v in d.items()})


class Tuner(ABC):
    """Base class of all tuners: observation log, budget, warm-up, JSON state.

    Subclasses implement ``_propose`` (called by ``ask`` after the warm-up) and
    may hook ``_after_ask``/``_after_tell`` and ``_extra_state``/
    ``_load_extra_state``.  Everything random derives from ``(seed, ask
    index)``, so a tuner restored with ``load_state_dict`` continues exactly as
    the uninterrupted one would.

    Args:
        space: the search space.
        budget: total cost budget ``B`` (same units as ``stage_costs``); drives
            cost cooling.
        seed: seeds the warm-up design and every randomized step.
        warmup: number of initial random configurations.
    """

    name: ClassVar[str] = "base"

    def __init__(self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10) -> None:
        if budget <= 0:
            raise ValueError(f"budget must be positive, got {budget}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup}")
        self.space = space
        self.budget = float(budget)
        self.seed = int(seed)
        self.warmup = int(warmup)
        self.observations: list[Observation] = []
        self.pending: dict[int, Candidate] = {}
        self.spent = 0.0
        self.b0: float | None = None
        self.n_asked = 0

    # ------------------------------------------------------------------ public API
    def ask(self, cache_view: CacheView | None = None) -> Candidate:
        """Propose the next configuration to run.

        Runs before each dispatch; may be called again before earlier
        candidates are told (they are then pending and avoided).
        """
        view = cache_view if cache_view is not None else CacheView.empty()
        index = self.n_asked
        if index < self.warmup:
            cand = self._warmup_candidate(index)
        else:
            if self.b0 is None:
                self.b0 = self.spent  # warm-up ended: cost cooling starts from here
            cand = self._propose(view, index)
        cand.id = index
        self.n_asked += 1
        self.pending[index] = cand
        self._after_ask(cand)
        return cand

    def tell(
        self,
        candidate: Candidate,
        objective: float | None,
        stage_costs: Sequence[float],
        cached: Sequence[bool] | None = None,
    ) -> None:
        """Record a finished run.

        Args:
            candidate: what ``ask`` returned (matched to the pending entry by ``id``).
            objective: the value to maximize; ``None`` (or NaN) for a failed run,
                whose cost still counts against the budget.
            stage_costs: seconds actually spent per stage: compute time for a
                computed stage, load time for a cache hit.
            cached: per stage, whether it was a cache hit (default: none).
        """
        s = self.space.n_stages
        costs = [float(c) for c in stage_costs]
        flags = [bool(c) for c in cached] if cached is not None else [False] * s
        if len(costs) != s or len(flags) != s:
            raise ValueError(f"need {s} stage costs and cached flags, got {len(costs)}, {len(flags)}")
        if any(not math.isfinite(c) or c < 0 for c in costs):
            raise ValueError(f"stage costs must be finite and >= 0, got {costs}")
        obj = None if objective is None or not math.isfinite(float(objective)) else float(objective)
        obs = Observation(
            id=int(candidate.id),
            params=copy.deepcopy(list(candidate.params)),
            objective=obj,
            stage_costs=costs,
            cached=flags,
            prefix_depth=int(candidate.prefix_depth),
        )
        self.pending.pop(obs.id, None)
        self.observations.append(obs)
        self.spent += sum(costs)
        self._after_tell(obs)

    @property
    def eta(self) -> float:
        """Cost-cooling exponent ``(B - spent) / (B - B0)`` clipped to [0, 1] (1 during warm-up)."""
        if self.b0 is None:
            return 1.0
        if self.budget <= self.b0:
            return 0.0
        return min(1.0, max(0.0, (self.budget - self.spent) / (self.budget - self.b0)))

    @property
    def best(self) -> Observation | None:
        """Best finished observation so far."""
        done = [o for o in self.observations if o.objective is not None]
        return max(done, key=lambda o: o.objective) if done else None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume, as plain JSON types (never pickle)."""
        return {
            "version": STATE_VERSION,
            "tuner": self.name,
            "space": self.space.fingerprint(),
            "budget": self.budget,
            "seed": self.seed,
            "warmup": self.warmup,
            "n_asked": self.n_asked,
            "spent": self.spent,
            "b0": self.b0,
            "observations": [o.to_dict() for o in self.observations],
            "pending": [c.to_dict() for c in self.pending.values()],
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()`` output (after a JSON round trip).

        The budget stays the one given to the constructor (a resumed study may
        extend it; cost cooling then stretches over the new ``B``); everything
        else (seed, warm-up, observations, pending, ``B0``, ask counter, plugin
        state) comes from ``state``.
        """
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"unsupported tuner state version {state.get('version')!r}")
        if state.get("tuner") != self.name:
            raise ValueError(f"state is for tuner {state.get('tuner')!r}, not {self.name!r}")
        if state.get("space") != self.space.fingerprint():
            raise ValueError("state was saved for a different search space")
        self.seed = int(state["seed"])
        self.warmup = int(state["warmup"])
        self.n_asked = int(state["n_asked"])
        self.spent = float(state["spent"])
        self.b0 = None if state["b0"] is None else float(state["b0"])
        self.observations = [Observation.from_dict(o) for o in state["observations"]]
        self.pending = {int(c["id"]): Candidate.from_dict(c) for c in state["pending"]}
        self._load_extra_state(state.get("extra") or {})

    # ------------------------------------------------------------------ plugin hooks
    @abstractmethod
    def _propose(self, cache_view: CacheView, index: int) -> Candidate:
        """Produce the candidate for ask number ``index`` (after the warm-up)."""

    def _after_ask(self, candidate: Candidate) -> None:
        """Called with every candidate ``ask`` returns (warm-up ones included)."""
        return None

    def _after_tell(self, observation: Observation) -> None:
        """Called after an observation was recorded."""
        return None

    def _extra_state(self) -> dict[str, Any]:
        """Plugin state for ``state_dict`` (JSON types)."""
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        """Inverse of ``_extra_state``; base state is already restored."""
        return None

    # ------------------------------------------------------------------ helpers
    def rng(self, index: int, stream: int = 0) -> np.random.Generator:
        """The generator for ask ``index``: a pure function of (seed, index, stream)."""
        return np.random.Generator(np.random.PCG64([self.seed, index, stream]))

    def known_keys(self) -> set[str]:
        """Keys of configurations already evaluated or pending (never proposed again)."""
        keys = {prefix_key(o.params) for o in self.observations}
        keys.update(prefix_key(c.params) for c in self.pending.values())
        return keys

    def random_candidate(self, index: int, source: str) -> Candidate:
        """A uniformly random configuration distinct from evaluated/pending ones."""
        known = self.known_keys()
        rng = self.rng(index)
        params = self.space.sample(rng)
        for _ in range(100):
            if prefix_key(params) not in known:
                break
            params = self.space.sample(rng)
        return Candidate(params=params, prefix_depth=0, source=source)

    def _warmup_candidate(self, index: int) -> Candidate:
        return self.random_candidate(index, "warmup")

    def observed_xy(self) -> tuple[list[list[dict[str, Any]]], list[float]]:
        """Params and objectives of the successful observations, in tell order."""
        done = [o for o in self.observations if o.objective is not None]
        return [o.params for o in done], [float(o.objective) for o in done]  # type: ignore[arg-type]


_REGISTRY: dict[str, Callable[[], type[Tuner]]] = {}


def register_tuner(name: str, loader: Callable[[], type[Tuner]]) -> None:
    """Register a plugin; ``loader`` returns the class (lazily, so optional deps stay optional)."""
    _REGISTRY[name] = loader


def _builtin_plugins() -> None:
    """The built-in plugins register themselves when imported (tpe: Optuna on first use)."""
    importlib.import_module("tuners.bo")
    importlib.import_module("tuners.random_search")
    _REGISTRY.setdefault("tpe", lambda: importlib.import_module("tuners.tpe").TPETuner)
    importlib.import_module("tuners.mf").register_mf_tuners()  # epochs as a fidelity


def available_tuners() -> list[str]:
    _builtin_plugins()
    return list(_REGISTRY)


def make_tuner(
    name: str,
    space: SearchSpace,
    budget: float,
    seed: int = 0,
    warmup: int = 10,
    **kwargs: Any,
) -> Tuner:
    """Create a tuner by name: ``eeipu``, ``ei``, ``eips``, ``carbo``, ``ms_carbo``, ``random``, ``tpe``.

    Extra keyword arguments go to the tuner's constructor (e.g. ``num_restarts``
    for the BO tuners).
    """
    try:
        _builtin_plugins()
        cls = _REGISTRY[name]()
    except KeyError:
        raise ValueError(f"unknown tuner {name!r}, expected one of {available_tuners()}") from None
    return cls(space, budget=budget, seed=seed, warmup=warmup, **kwargs)
