"""EEIPU and the cost-aware BO baselines, on one code path.

``CostAwareBO`` is the whole algorithm; the plugins only set three switches:

=========  ===========  =======  ========
tuner      cost model   cooling  memoize
=========  ===========  =======  ========
ei         none         -        no
eips       total        no       no
carbo      total        yes      no
ms_carbo   per stage    yes      no
eeipu      per stage    yes      yes
=========  ===========  =======  ========

One ask (after the shared random warm-up):

1. Fit the objective GP and the cost GP(s) (``tuners.models``), warm-started
   from the previous ask's hyperparameters.
2. Pending candidates (asked, not yet told) are added to the objective GP as
   kriging-believer fantasies (posterior mean, same hyperparameters): their
   EI collapses, so parallel asks spread out.
3. Prefix pool (EEIPU only; the others use the empty prefix alone): the empty
   prefix, the prefixes (depth 1..S-1) of the ``top_n`` best configurations,
   and the cached prefixes from the ``CacheView`` ranked by the best objective
   of a run through them (``max_cached_prefixes``), de-duplicated and capped
   at ``max_pool``.  A prefix's ``delta`` is how much of it the cache view
   says is cached; those stages are priced at their load cost.
4. Screening: one Sobol set of ``raw_samples`` points is shared by all
   prefixes (each prefix overwrites its pinned columns), so the whole pool is
   ranked with one batched, no-grad acquisition evaluation and common random
   numbers.
5. Only the ``n_optimize`` best-screened prefixes get a gradient
   optimization (``optimize_acqf`` with ``fixed_features`` = the pinned
   columns, L-BFGS-B from the ``num_restarts`` best screened points of that
   prefix).  The empty prefix competes on equal terms; with all dims free it
   screens lower than pinned prefixes near good configurations, which biases
   EEIPU toward local, reuse-heavy search.  Measured on the synthetic suite,
   always optimizing the empty prefix as well cost ~30% of the evaluations
   and did not improve the objective, so that bias is kept.
6. Mixed spaces: ints and categoricals are optimized relaxed (int: one
   continuous column; categorical: one-hot columns) and then rounded; the
   screened points are rounded before they are scored, and every optimized
   point is re-scored after rounding, so the winner is always a valid
   configuration scored as such.
7. The best candidate not equal to an evaluated or pending configuration wins.
   Its pinned stages are *copies of the stored dicts* (never decoded), so a
   reused prefix hits the cache exactly.

Cost cooling: ``eta = (B - spent) / (B - B0)``, ``B0`` = spent when the warm-up
ended, so late asks are cost-unaware (pure LogEI).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from botorch.optim import optimize_acqf
from botorch.utils.sampling import draw_sobol_normal_samples, draw_sobol_samples
from torch import Tensor

from tuners.acquisition import LogCostCooledEI, screen
from tuners.base import CacheView, Candidate, Observation, Tuner, register_tuner
from tuners.models import (
    DTYPE,
    GPPredictor,
    StageCostModel,
    TotalCostModel,
    fit_gp,
    gp_with_hparams,
)
from tuners.space import FloatParam, prefix_key

__all__ = ["CostAwareBO", "EEIPU", "EI", "EIPS", "CArBO", "MSCArBO"]


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op threads.

    GP matrices of a few hundred points gain nothing from intra-op threads, and
    OpenMP spin-waiting next to other busy processes (a training run, a
    parallel benchmark worker) makes fits 10-100x slower; so asks default to 1.
    """
    old = torch.get_num_threads()
    if n is None or n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


@dataclass
class _Prefix:
    """One entry of the prefix pool."""

    params: list[dict[str, Any]]  # exact stored dicts, len = pinned depth
    delta: int  # leading stages the cache view says are cached
    cached: Tensor  # S bools
    log_eps: Tensor  # S log load costs (meaningful where cached)
    pinned: Tensor  # unit values of the pinned columns


def prefix_load_costs(view: CacheView, params: Sequence[Mapping[str, Any]], depth: int,
                      fallback: Sequence[float]) -> list[float]:
    """Per stage: the measured load cost of the cached prefix ``params[:depth]`` where the
    view has one, else ``fallback``."""
    eps = list(fallback)
    if depth:
        entry = view.get(params[:depth])
        for k in range(depth):
            lc = entry.load_costs[k] if entry is not None and k < len(entry.load_costs) else None
            if lc is not None and lc > 0:
                eps[k] = float(lc)
    return eps


def fallback_load_costs(observations: Sequence[Observation], n_stages: int,
                        load_fraction: float) -> list[float]:
    """Per stage: mean told load cost, else ``load_fraction`` x mean compute cost."""
    out = []
    for k in range(n_stages):
        loads = [o.stage_costs[k] for o in observations if o.cached[k]]
        comps = [o.stage_costs[k] for o in observations if not o.cached[k]]
        if loads:
            out.append(max(sum(loads) / len(loads), 1e-9))
        elif comps:
            out.append(max(load_fraction * sum(comps) / len(comps), 1e-9))
        else:
            out.append(1e-3)
    return out


def pinned_blocks(raw: Tensor, pinned: Sequence[Tensor]) -> list[Tensor]:
    """The shared Sobol screening points, once per prefix with its pinned columns set."""
    blocks = []
    for pin in pinned:
        Xb = raw.clone()
        if pin.numel():
            Xb[:, : pin.numel()] = pin
        blocks.append(Xb)
    return blocks


def screened_contenders(vals: Tensor, blocks: Sequence[Tensor],
                        n_keep: int) -> tuple[list[int], list[tuple[int, Tensor]]]:
    """Prefixes ordered by their best screened value, and each one's ``n_keep`` best
    screened points as (prefix index, unit row): the contenders before optimization."""
    order = torch.argsort(vals.max(dim=-1).values, descending=True).tolist()
    rows = [(i, blocks[i][j]) for i in order
            for j in torch.topk(vals[i], min(n_keep, vals.shape[1])).indices.tolist()]
    return order, rows


def pool_prefixes(space: Any, ranked: Sequence[tuple[float, Sequence[Mapping[str, Any]]]],
                  cached: Sequence[Sequence[Mapping[str, Any]]], top_n: int,
                  max_cached: int) -> list[list[dict[str, Any]]]:
    """The pinned prefixes of the acquisition's pool (EEIPU's candidate generation).

    ``ranked``: (value, config) best first; the prefixes of the ``top_n`` best
    come first, then up to ``max_cached`` cached prefixes ranked by the best
    configuration through them (prefixes not of this space are skipped).
    """
    s = space.n_stages
    best_through: dict[str, float] = {}
    for value, params in ranked:  # sorted: first write is the best run through each prefix
        for d in range(1, s):
            best_through.setdefault(prefix_key(params[:d]), value)
    chosen: list[list[dict[str, Any]]] = []
    seen = {prefix_key([])}

    def add(params: Sequence[Mapping[str, Any]]) -> None:
        key = prefix_key(params)
        if key not in seen:
            seen.add(key)
            chosen.append([dict(x) for x in params])

    for _, params in ranked[:top_n]:
        for d in range(1, s):
            add(params[:d])
    n_cached = 0
    for p in sorted(cached, key=lambda p: (best_through.get(prefix_key(p), -math.inf), len(p)),
                    reverse=True):
        if n_cached >= max_cached:
            break
        try:
            space.validate([dict(x) for x in p])
        except (ValueError, KeyError, TypeError):
            continue  # not a prefix of this space (e.g. another study's runs)
        add(p)
        n_cached += 1
    return chosen


@dataclass(frozen=True)
class BOSettings:
    """The acquisition-optimization knobs of every BO tuner (stage-level and EEIPU-MF).

    Defaults are tuned for ~1 s asks on 2 cores:
        n_mc: QMC samples for ``E[1/C]`` (authors: 1000; 512 Sobol points are
            plenty for a 1-5 dimensional lognormal sum).
        n_mc_screen: the first draws of the same QMC set, used while screening
            (ranking only; every final contender is re-scored with ``n_mc``).
        raw_samples: shared Sobol screening points per prefix.
        num_restarts: L-BFGS starts per optimized prefix.
        n_optimize: prefixes that get a gradient optimization.
        top_n: best configurations whose prefixes enter the pool (authors: 5).
        max_cached_prefixes / max_pool: pool bounds.
        maxiter: L-BFGS iterations for the acquisition.
        fit_maxiter: L-BFGS iterations of a warm-started GP refit.
        full_refit_every: refit from default init every this many BO asks.
        load_fraction: load-cost fallback as a fraction of the stage's mean
            compute cost, when neither the cache view nor past hits give one.
        threads: torch intra-op threads during an ask (``None``: leave as is).
    """

    n_mc: int = 512
    n_mc_screen: int = 64
    raw_samples: int = 512
    num_restarts: int = 4
    n_optimize: int = 3
    top_n: int = 5
    max_cached_prefixes: int = 16
    max_pool: int = 32
    maxiter: int = 100
    fit_maxiter: int = 50
    full_refit_every: int = 10
    load_fraction: float = 0.01
    threads: int | None = 1

    def apply_to(self, tuner: Any) -> None:
        """Set every knob as an attribute of ``tuner`` (what the BO code reads)."""
        for f in fields(self):
            setattr(tuner, f.name, getattr(self, f.name))
        tuner.full_refit_every = max(1, self.full_refit_every)


class CostAwareBO(Tuner):
    """GP-based BO with a cost-cooled, optionally memoization-aware acquisition.

    Keyword args are ``BOSettings``'s knobs (unknown names raise TypeError).
    """

    cost_model_kind: ClassVar[str] = "none"  # "none" | "total" | "stage"
    cooling: ClassVar[bool] = False
    memoize: ClassVar[bool] = False

    def __init__(
        self,
        space: Any,
        budget: float,
        seed: int = 0,
        warmup: int = 10,
        **settings: Any,
    ) -> None:
        super().__init__(space, budget, seed, warmup)
        BOSettings(**settings).apply_to(self)
        self._hparams: dict[str, Any] = {"objective": None, "cost": None}
        self._discrete = any(
            not isinstance(p, FloatParam) for stage in space.stages for p in stage
        )
        self._z = draw_sobol_normal_samples(
            d=max(1, space.n_stages), n=self.n_mc, dtype=DTYPE, seed=self.seed
        )
        self._unit_cache: dict[str, list[float]] = {}

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        return {"hparams": copy.deepcopy(self._hparams)}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        hp = extra.get("hparams") or {}
        self._hparams = {"objective": hp.get("objective"), "cost": hp.get("cost")}
        self._z = draw_sobol_normal_samples(  # the state's seed may differ from ours
            d=max(1, self.space.n_stages), n=self.n_mc, dtype=DTYPE, seed=self.seed
        )

    # ------------------------------------------------------------------ helpers
    def _unit(self, params: list[dict[str, Any]]) -> list[float]:
        key = prefix_key(params)
        if key not in self._unit_cache:
            self._unit_cache[key] = self.space.to_unit(params)
        return self._unit_cache[key]

    def _tensor(self, configs: list[list[dict[str, Any]]]) -> Tensor:
        return torch.tensor([self._unit(p) for p in configs], dtype=DTYPE).reshape(
            len(configs), self.space.dim
        )

    def _fit_cost_model(self, full: bool) -> StageCostModel | TotalCostModel | None:
        if self.cost_model_kind == "none":
            return None
        obs = [o for o in self.observations if sum(o.stage_costs) > 0]
        prev = self._hparams.get("cost") or []
        if self.cost_model_kind == "total":
            rows = [o for o in obs if not any(o.cached)] or obs
            X = self._tensor([o.params for o in rows])
            y = torch.tensor([math.log(max(sum(o.stage_costs), 1e-9)) for o in rows], dtype=DTYPE)
            ws = None if full or not prev else prev[0]
            model: StageCostModel | TotalCostModel = TotalCostModel(
                X, y, ws, self.fit_maxiter, self._z
            )
        else:
            data = []
            for k in range(self.space.n_stages):
                rows = [o for o in obs if not o.cached[k] and o.stage_costs[k] > 0]
                X = self._tensor([o.params for o in rows])
                y = torch.tensor([math.log(o.stage_costs[k]) for o in rows], dtype=DTYPE)
                data.append((X, y))
            ws = [None] * self.space.n_stages if full or len(prev) != self.space.n_stages else prev
            model = StageCostModel(self.space.stage_slices, data, ws, self.fit_maxiter, self._z)
        self._hparams["cost"] = model.hparams
        return model

    def _fallback_load_costs(self) -> list[float]:
        return fallback_load_costs(self.observations, self.space.n_stages, self.load_fraction)

    def _make_prefix(self, params: list[dict[str, Any]], view: CacheView, fallback: list[float]) -> _Prefix:
        s = self.space.n_stages
        delta = view.cached_depth(params)
        eps = prefix_load_costs(view, params, delta, fallback)
        cached = torch.tensor([k < delta for k in range(s)])
        pinned: list[float] = []
        for k, p in enumerate(params):
            pinned.extend(self.space.stage_to_unit(k, p))
        return _Prefix(
            params=[copy.deepcopy(dict(p)) for p in params],
            delta=delta,
            cached=cached,
            log_eps=torch.tensor([math.log(e) for e in eps], dtype=DTYPE),
            pinned=torch.tensor(pinned, dtype=DTYPE),
        )

    def _prefix_pool(self, view: CacheView) -> list[_Prefix]:
        fallback = self._fallback_load_costs()
        pool = [self._make_prefix([], view, fallback)]
        s = self.space.n_stages
        if not self.memoize or s < 2:
            return pool
        done = sorted(
            (o for o in self.observations if o.objective is not None),
            key=lambda o: o.objective,  # type: ignore[arg-type,return-value]
            reverse=True,
        )
        chosen = pool_prefixes(self.space, [(float(o.objective), o.params) for o in done],  # type: ignore[arg-type]
                               [list(p.params) for p in view.prefixes if p.depth < s],
                               self.top_n, self.max_cached_prefixes)
        for params in chosen[: self.max_pool - 1]:
            pool.append(self._make_prefix(params, view, fallback))
        return pool

    def _round(self, X: Tensor) -> Tensor:
        """Project rows to valid configurations (no-op for all-float spaces)."""
        if not self._discrete:
            return X.clamp(0.0, 1.0)
        return torch.tensor([self.space.project(row) for row in X.tolist()], dtype=DTYPE)

    # ------------------------------------------------------------------ the ask
    def _propose(self, cache_view: CacheView, index: int) -> Candidate:
        configs, ys = self.observed_xy()
        if len(ys) < 2:
            return self.random_candidate(index, "random")
        try:
            with torch_threads(self.threads), torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + index) % (2**31))
                return self._propose_bo(cache_view, index, configs, ys)
        except RuntimeError as err:  # numerical trouble (e.g. a non-PSD kernel): keep going
            warnings.warn(f"{self.name}: model step failed ({err}); random candidate", stacklevel=2)
            return self.random_candidate(index, "random")

    def _propose_bo(
        self, view: CacheView, index: int, configs: list[list[dict[str, Any]]], ys: list[float]
    ) -> Candidate:
        d, s = self.space.dim, self.space.n_stages
        full = (index - self.warmup) % self.full_refit_every == 0
        X = self._tensor(configs)
        Y = torch.tensor(ys, dtype=DTYPE).unsqueeze(-1)
        model, hp = fit_gp(X, Y, None if full else self._hparams.get("objective"), self.fit_maxiter)
        self._hparams["objective"] = hp
        cost_model = self._fit_cost_model(full)
        eta = (self.eta if self.cooling else 1.0) if cost_model is not None else 0.0
        if self.pending:
            Xp = self._tensor([c.params for c in self.pending.values()])
            with torch.no_grad():
                yp = model.posterior(Xp).mean
            model = gp_with_hparams(torch.cat([X, Xp]), torch.cat([Y, yp]), hp)
        best_f = float(Y.max())
        pred = GPPredictor(model)

        pool = self._prefix_pool(view)
        bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
        raw = draw_sobol_samples(bounds, n=self.raw_samples, q=1, seed=self.seed * 7919 + index)
        raw = self._round(raw.squeeze(-2))
        blocks = pinned_blocks(raw, [pre.pinned for pre in pool])
        cached_rows = [pre.cached.expand(raw.shape[0], s) for pre in pool]
        eps_rows = [pre.log_eps.expand(raw.shape[0], s) for pre in pool]
        Xall = torch.cat(blocks)
        vals = screen(
            pred, best_f, cost_model, eta, Xall, torch.cat(cached_rows), torch.cat(eps_rows),
            n_mc=self.n_mc_screen,
        )
        vals = vals.view(len(pool), -1)

        # Final contenders (prefix index, valid unit row): the best screened points
        # of every prefix plus the rounded optima of the promising prefixes.
        order, rows = screened_contenders(vals, blocks, max(self.num_restarts, 4))
        for i in order[: self.n_optimize]:
            pre = pool[i]
            w = pre.pinned.numel()
            acq = LogCostCooledEI(model, best_f, cost_model, eta, pre.cached, pre.log_eps, pred)
            top = torch.topk(vals[i], min(self.num_restarts, vals.shape[1])).indices
            ics = blocks[i][top].unsqueeze(-2)
            fixed = {j: float(pre.pinned[j]) for j in range(w)} or None
            cand_X, _ = optimize_acqf(
                acq,
                bounds=bounds,
                q=1,
                num_restarts=ics.shape[0],
                batch_initial_conditions=ics,
                fixed_features=fixed,
                options={"maxiter": self.maxiter},
                return_best_only=False,
                retry_on_optimization_warning=False,
            )
            Xr = self._round(cand_X.detach().reshape(-1, d))
            if w:
                Xr[:, :w] = pre.pinned
            rows.extend((i, row) for row in Xr)
        # Re-score every contender with all QMC draws, in one batch.
        idx = [i for i, _ in rows]
        Xc = torch.stack([row for _, row in rows])
        final = screen(
            pred, best_f, cost_model, eta, Xc,
            torch.stack([pool[i].cached for i in idx]), torch.stack([pool[i].log_eps for i in idx]),
        )
        scored = [(float(v), i, row) for v, (i, row) in zip(final.tolist(), rows, strict=True)]

        known = self.known_keys()
        scored.sort(key=lambda t: t[0], reverse=True)
        for value, i, row in scored:
            pre = pool[i]
            npin = len(pre.params)
            free = row.tolist()
            params = [copy.deepcopy(p) for p in pre.params] + [
                self.space.stage_from_unit(k, free[self.space.stage_slices[k]])
                for k in range(npin, s)
            ]
            if prefix_key(params) in known:
                continue
            expected_cost = None
            if cost_model is not None:
                with torch.no_grad():
                    lic = cost_model.log_expected_inverse_cost(
                        row.unsqueeze(0), pre.cached, pre.log_eps
                    )
                expected_cost = float(torch.exp(-lic))
            return Candidate(
                params=params,
                prefix_depth=pre.delta if npin else 0,
                source="bo",
                acq_value=value,
                eta=eta,
                expected_cost=expected_cost,
            )
        return self.random_candidate(index, "random")


class EI(CostAwareBO):
    """Cost-unaware LogEI."""

    name = "ei"


class EIPS(CostAwareBO):
    """EI per second (Snoek et al. 2012): ``EI * E[1/c]`` with one total-cost GP, eta = 1."""

    name = "eips"
    cost_model_kind = "total"
    cooling = False


class CArBO(CostAwareBO):
    """CArBO (Lee et al. 2020): ``EI * E[1/c]^eta``, one total-cost GP, cost cooling."""

    name = "carbo"
    cost_model_kind = "total"
    cooling = True


class MSCArBO(CostAwareBO):
    """Multi-stage CArBO: per-stage cost GPs and cost cooling, but no memoization."""

    name = "ms_carbo"
    cost_model_kind = "stage"
    cooling = True


class EEIPU(CostAwareBO):
    """EEIPU (Essofi et al. 2024): per-stage cost GPs, cost cooling, prefix reuse."""

    name = "eeipu"
    cost_model_kind = "stage"
    cooling = True
    memoize = True


for _cls in (EI, EIPS, CArBO, MSCArBO, EEIPU):
    register_tuner(_cls.name, lambda c=_cls: c)
