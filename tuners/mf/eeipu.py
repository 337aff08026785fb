"""EEIPU-MF: EEIPU's memoization- and cost-aware acquisition picks the new trials of ASHA rungs.

Design (and why):

* **Rungs and promotions are ASHA's** (``RungTuner._promotion``), exactly as
  for the ``asha`` baseline; only the choice of each new trial differs.  So
  the comparison with ASHA isolates the acquisition, and promotions keep
  their guarantee (a trial in the top ``1/eta`` of its rung continues from
  its checkpoint).
* **Objective model: one GP over (x, s)**, ``s = log(epochs) / log(max_epochs)``
  in [0, 1] as an extra input column, trained on every told segment (every
  rung of every trial).  The alternative, a GP on the final rung only, would
  see a handful of points (ASHA sends 1 in 9 trials to the top) and ignore
  the 1- and 3-epoch results that are most of the data; a GP with the
  fidelity as an input (as in Kandasamy et al. 2017, Wu et al. 2019) shares
  strength across rungs through the learned lengthscale of ``s`` and, with
  few rungs (3), needs no learning-curve-specific kernel.  The acquisition
  asks about the *final* objective: EI is taken at ``s = 1`` with the
  incumbent ``best_f`` = the highest posterior mean at ``s = 1`` over the
  configurations tried so far (most have only low-fidelity observations,
  so an observed maximum would be biased low).
* **Cost model: EEIPU's per-stage log-cost GPs** (``StageCostModel``), with
  the training stage modelled *per epoch* (its told cost divided by the
  epochs it actually trained; resumes are reported by the runner), so one
  GP prices any number of epochs.  A candidate is priced as what it costs
  now: the rung-0 segment ``(x, rungs[0] epochs)`` with the cache as it is,
  by the same rule the runner uses (``MFCacheView.plan``): cached upstream
  stages at their load cost, a training-stage checkpoint at exactly
  ``rungs[0]`` epochs as a load, an earlier checkpoint as a load plus the
  remaining epochs, the rest computed.
  ``log EEIPU-MF(x) = LogEI(x, s=1) + eta * log E[1/C(x, cache)]`` with
  ``E[1/C]`` by QMC over the cost GPs (as ``tuners.models``), cost cooling
  ``eta = (B - spent) / (B - B0)`` from the end of the warm-up.
* **Candidate generation is EEIPU's**: a pool of pinned prefixes (the empty
  one, prefixes of the best trials by posterior mean at ``s = 1``, cached
  prefixes and training-stage checkpoints ranked by the best trial through
  them), screened on shared Sobol points, the most promising optimized
  with ``optimize_acqf`` and ``fixed_features``; pinned stages are copies
  of stored dicts, so reuse hits the cache exactly.

* **Blind rungs are skipped**: when most results of a rung are one value
  (``tuners.mf.core.tied_majority``: e.g. accuracy at chance for every
  configuration before training leaves its plateau), that rung cannot rank
  and promotions from it are by chance; new trials then start at the first
  rung that ranks.  The baselines keep their published rules.

Not done: kriging-believer fantasies for pending asks (the simulator is
sequential; parallel asks still never repeat a configuration).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from botorch.acquisition import AcquisitionFunction
from botorch.optim import optimize_acqf
from botorch.utils.sampling import draw_sobol_normal_samples, draw_sobol_samples
from botorch.utils.transforms import t_batch_mode_transform
from torch import Tensor

from tuners.acquisition import log_ei
from tuners.base import CacheView, Candidate
from tuners.bo import (
    BOSettings,
    fallback_load_costs,
    pinned_blocks,
    pool_prefixes,
    prefix_load_costs,
    screened_contenders,
    torch_threads,
)
from tuners.mf.core import RUNG_ARGS, MFCacheView, RungTuner
from tuners.models import DTYPE, GPPredictor, StageCostModel, _LogCostGP, fit_gp
from tuners.space import FloatParam, SearchSpace, prefix_key

__all__ = ["EEIPUMF", "log_inverse_cost"]


@dataclass
class _Priced:
    """A pinned prefix (or full config) priced as a rung-0 segment."""

    params: list[dict[str, Any]]
    cached: Tensor  # S bools
    log_eps: Tensor  # S log load costs
    log_train: float  # log of the epochs the training stage would train
    resume: bool  # continues from an earlier checkpoint (pays its load too)
    pinned: Tensor  # unit values of the pinned columns
    hits: int  # leading cached stages


@dataclass
class _Models:
    pred: GPPredictor
    best_f: float
    cost: StageCostModel
    eta: float


def log_inverse_cost(
    cost_model: StageCostModel,
    X: Tensor,
    cached: Tensor,
    log_eps: Tensor,
    log_train: Tensor,
    resume: Tensor,
    train_stage: int,
    n_mc: int | None = None,
) -> Tensor:
    """``log E[1/C]`` of rung segments at ``X`` (``b x d`` -> ``b``), per-row cache state.

    ``C_j = sum_{cached} eps_k + sum_{computed, k != t} exp(g_kj)
    + [resume] eps_t + n_train * exp(g_tj)``, ``g_t`` the per-epoch log cost;
    ``cached``/``log_eps``: ``b x S``; ``log_train``/``resume``: ``b``.
    Same QMC draws for every row (common random numbers), all in log space.
    """
    t = train_stage
    mu, sd = cost_model.moments(X)
    z = cost_model.z[:n_mc] if n_mc else cost_model.z
    g = mu.unsqueeze(0) + sd.unsqueeze(0) * z.unsqueeze(1)  # M x b x S
    gt = g[..., t] + log_train
    gt = torch.where(resume, torch.logaddexp(gt, log_eps[:, t].expand_as(gt)), gt)
    g = torch.cat([g[..., :t], gt.unsqueeze(-1), g[..., t + 1 :]], dim=-1)
    g = torch.where(cached.unsqueeze(0), log_eps.unsqueeze(0).expand_as(g), g)
    log_c = torch.logsumexp(g, dim=-1)  # M x b
    return torch.logsumexp(-log_c, dim=0) - math.log(log_c.shape[0])


class _StageCosts(StageCostModel):
    """``StageCostModel`` from already fitted per-stage GPs (a stage without new data keeps its fit)."""

    def __init__(self, gps: Sequence[_LogCostGP], z: Tensor) -> None:
        self.gps = list(gps)
        self.z = z


class _Acq(AcquisitionFunction):
    """A BoTorch wrapper (q = 1) of a closure ``b x d -> b`` for ``optimize_acqf``."""

    def __init__(self, model: Any, fn: Any) -> None:
        super().__init__(model=model)
        self.fn = fn

    @t_batch_mode_transform(expected_q=1)
    def forward(self, X: Tensor) -> Tensor:
        return self.fn(X.squeeze(-2))


class EEIPUMF(RungTuner):
    """ASHA rungs whose new trials come from EEIPU's acquisition (see the module docstring).

    Keyword args: ``RungTuner``'s rungs (``RUNG_ARGS``), then ``BOSettings``'s knobs.
    """

    name = "eeipu-mf"
    skip_blind_rungs = True

    def __init__(self, space: SearchSpace, budget: float, seed: int = 0, warmup: int = 10,
                 **kwargs: Any) -> None:
        rung = {k: kwargs.pop(k) for k in RUNG_ARGS if k in kwargs}
        super().__init__(space, budget, seed, warmup, **rung)
        BOSettings(**kwargs).apply_to(self)
        self._discrete = any(not isinstance(p, FloatParam) for st in space.stages for p in st)
        self._z = draw_sobol_normal_samples(d=space.n_stages, n=self.n_mc, dtype=DTYPE, seed=self.seed)
        self._hparams: dict[str, Any] = {"objective": None, "cost": None}
        self._n_bo = 0
        self._cost_gps: dict[int, tuple[int, _LogCostGP]] = {}  # stage -> (rows, fit)

    # ------------------------------------------------------------------ state
    def _extra_state(self) -> dict[str, Any]:
        out = super()._extra_state()
        out["hparams"] = copy.deepcopy(self._hparams)
        out["n_bo"] = self._n_bo
        return out

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        super()._load_extra_state(extra)
        hp = extra.get("hparams") or {}
        self._hparams = {"objective": hp.get("objective"), "cost": hp.get("cost")}
        self._n_bo = int(extra.get("n_bo", 0))
        self._cost_gps = {}
        self._z = draw_sobol_normal_samples(
            d=self.space.n_stages, n=self.n_mc, dtype=DTYPE, seed=self.seed
        )

    # ------------------------------------------------------------------ data
    def _fidelity(self, epochs: int) -> float:
        return math.log(epochs) / math.log(self.max_epochs) if self.max_epochs > 1 else 1.0

    def _unit(self, params: list[dict[str, Any]]) -> list[float]:
        return self.space.to_unit(params)

    def _objective_data(self) -> tuple[Tensor, Tensor]:
        rows, ys = [], []
        for o in self.observations:
            if o.objective is None:
                continue
            seg = self.segments.get(o.id)
            epochs = seg["epochs"] if seg else self.max_epochs
            rows.append([*self._unit(o.params), self._fidelity(epochs)])
            ys.append(o.objective)
        X = torch.tensor(rows, dtype=DTYPE).reshape(len(rows), self.space.dim + 1)
        return X, torch.tensor(ys, dtype=DTYPE).unsqueeze(-1)

    def _fallback_load_costs(self) -> list[float]:
        return fallback_load_costs(self.observations, self.space.n_stages, self.load_fraction)

    def _fit_cost_model(self, full: bool, fallback: list[float]) -> StageCostModel:
        t = self.train_stage
        data = []
        for k in range(self.space.n_stages):
            xs, ys = [], []
            for o in self.observations:
                if o.cached[k] or o.stage_costs[k] <= 0:
                    continue
                c = o.stage_costs[k]
                if k == t:
                    seg = self.segments.get(o.id)
                    epochs, start = (seg["epochs"], seg["trained_from"]) if seg else (self.max_epochs, 0)
                    if epochs <= start:
                        continue
                    if start > 0:  # a resume also paid the checkpoint's load
                        c = max(c - fallback[k], 1e-3 * c)
                    c /= epochs - start
                xs.append(self._unit(o.params))
                ys.append(math.log(c))
            X = torch.tensor(xs, dtype=DTYPE).reshape(len(xs), self.space.dim)
            data.append((X, torch.tensor(ys, dtype=DTYPE)))
        prev = self._hparams.get("cost") or []
        ws = [None] * self.space.n_stages if full or len(prev) != self.space.n_stages else prev
        gps = []
        for k, ((X, y), sl) in enumerate(zip(data, self.space.stage_slices, strict=True)):
            old = self._cost_gps.get(k)
            if old is not None and not full and old[0] == X.shape[0]:
                gps.append(old[1])  # no new computed runs of this stage: the fit is unchanged
                continue
            gp = _LogCostGP(sl, X, y, ws[k], self.fit_maxiter)
            self._cost_gps[k] = (X.shape[0], gp)
            gps.append(gp)
        model = _StageCosts(gps, self._z)
        self._hparams["cost"] = model.hparams
        return model

    def _fit(self, full: bool, fallback: list[float]) -> tuple[_Models, list[tuple[float, list[dict[str, Any]]]]]:
        """Fit both models; also the trials ranked by posterior mean at full fidelity."""
        X, Y = self._objective_data()
        model, hp = fit_gp(X, Y, None if full else self._hparams.get("objective"), self.fit_maxiter)
        self._hparams["objective"] = hp
        pred = GPPredictor(model)
        configs = [tr.params for tr in self.trials if tr.best is not None]
        Xt = torch.tensor(
            [[*self._unit(p), 1.0] for p in configs], dtype=DTYPE
        ).reshape(len(configs), self.space.dim + 1)
        with torch.no_grad():
            means = pred(Xt)[0].tolist() if configs else []
        best_f = max(means) if means else float(Y.max())
        ranked = sorted(zip(means, configs, strict=True), key=lambda mc: mc[0], reverse=True)
        models = _Models(pred, best_f, self._fit_cost_model(full, fallback), self.eta)
        return models, ranked

    # ------------------------------------------------------------------ pricing
    def _price(self, params: list[dict[str, Any]], view: CacheView, fallback: list[float]) -> _Priced:
        """Price ``params`` (a prefix or a full config) as a new trial's first segment
        (``start_rung``) under ``view``."""
        s, t, epochs = self.space.n_stages, self.train_stage, self.rungs[self.start_rung()]
        if isinstance(view, MFCacheView) and view.train_stage == t:
            plan = view.plan(params, epochs)
            flags, resume = plan.cached, plan.resume_from
        else:  # no checkpoint info: only upstream stage-level prefixes can be reused
            d = view.cached_depth(params[: min(len(params), t)])
            flags, resume = [k < d for k in range(len(params))], 0
        flags = list(flags) + [False] * (s - len(flags))
        hits = 0
        while hits < s and flags[hits]:
            hits += 1
        eps = prefix_load_costs(view, params, min(hits, t), fallback)
        pinned: list[float] = []
        for k, p in enumerate(params):
            pinned.extend(self.space.stage_to_unit(k, p))
        return _Priced(
            params=[copy.deepcopy(dict(p)) for p in params],
            cached=torch.tensor(flags),
            log_eps=torch.tensor([math.log(e) for e in eps], dtype=DTYPE),
            log_train=math.log(max(epochs - resume, 1)),
            resume=resume > 0,
            pinned=torch.tensor(pinned, dtype=DTYPE),
            hits=hits,
        )

    def _values(self, m: _Models, X: Tensor, rows: Sequence[_Priced], n_mc: int | None = None) -> Tensor:
        """Log acquisition at ``X`` (``b x d``), row ``i`` priced as ``rows[i]``."""
        val = log_ei(m.pred, m.best_f, torch.cat([X, torch.ones(X.shape[0], 1, dtype=X.dtype)], -1))
        if m.eta == 0.0:
            return val
        lic = log_inverse_cost(
            m.cost, X,
            torch.stack([r.cached for r in rows]),
            torch.stack([r.log_eps for r in rows]),
            torch.tensor([r.log_train for r in rows], dtype=DTYPE),
            torch.tensor([r.resume for r in rows]),
            self.train_stage, n_mc,
        )
        return val + m.eta * lic

    def _screen(self, m: _Models, X: Tensor, rows: Sequence[_Priced], n_mc: int | None, chunk: int = 4096) -> Tensor:
        out = []
        with torch.no_grad():
            for i in range(0, X.shape[0], chunk):
                out.append(self._values(m, X[i : i + chunk], rows[i : i + chunk], n_mc))
        return torch.cat(out)

    def score(self, configs: Sequence[Sequence[Mapping[str, Any]]], view: CacheView) -> list[float]:
        """Log acquisition of full configurations as new rung-0 trials under ``view``.

        Fits the models as an ask would (no state change other than cached
        hyperparameters); for tests and diagnostics.
        """
        fallback = self._fallback_load_costs()
        with torch_threads(self.threads):
            m, _ = self._fit(True, fallback)
            rows = [self._price([dict(p) for p in c], view, fallback) for c in configs]
            X = torch.tensor([self._unit(r.params) for r in rows], dtype=DTYPE)
            return self._screen(m, X, rows, None).tolist()

    # ------------------------------------------------------------------ the proposal
    def _round(self, X: Tensor) -> Tensor:
        if not self._discrete:
            return X.clamp(0.0, 1.0)
        return torch.tensor([self.space.project(row) for row in X.tolist()], dtype=DTYPE)

    def _pool(
        self, view: CacheView, ranked: list[tuple[float, list[dict[str, Any]]]], fallback: list[float]
    ) -> list[_Priced]:
        s = self.space.n_stages
        pool = [self._price([], view, fallback)]
        if s < 2:
            return pool
        cached = [list(p.params) for p in view.prefixes if p.depth < s]
        if isinstance(view, MFCacheView):
            cached += [list(e.params) for e in view.checkpoints.values() if len(e.params) < s]
        chosen = pool_prefixes(self.space, ranked, cached, self.top_n, self.max_cached_prefixes)
        pool.extend(self._price(p, view, fallback) for p in chosen[: self.max_pool - 1])
        return pool

    def _propose_new(self, cache_view: CacheView, index: int, trial: int) -> Candidate:
        if sum(o.objective is not None for o in self.observations) < 2:
            return self.random_candidate(trial, "random")
        try:
            with torch_threads(self.threads), torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + index) % (2**31))
                return self._propose_bo(cache_view, index, trial)
        except RuntimeError as err:  # numerical trouble: keep going
            warnings.warn(f"{self.name}: model step failed ({err}); random candidate", stacklevel=2)
            return self.random_candidate(trial, "random")

    def _propose_bo(self, view: CacheView, index: int, trial: int) -> Candidate:
        d = self.space.dim
        full = self._n_bo % self.full_refit_every == 0
        self._n_bo += 1
        fallback = self._fallback_load_costs()
        m, ranked = self._fit(full, fallback)
        pool = self._pool(view, ranked, fallback)
        bounds = torch.stack([torch.zeros(d, dtype=DTYPE), torch.ones(d, dtype=DTYPE)])
        raw = draw_sobol_samples(bounds, n=self.raw_samples, q=1, seed=self.seed * 7919 + index)
        raw = self._round(raw.squeeze(-2))
        blocks = pinned_blocks(raw, [pre.pinned for pre in pool])
        rows = [pre for pre in pool for _ in range(raw.shape[0])]
        vals = self._screen(m, torch.cat(blocks), rows, self.n_mc_screen).view(len(pool), -1)
        order, contenders = screened_contenders(vals, blocks, max(self.num_restarts, 4))
        for i in order[: self.n_optimize]:
            pre = pool[i]
            w = pre.pinned.numel()
            if w == d:
                continue
            acq = _Acq(m.pred.model, lambda X, pre=pre: self._values(m, X, [pre] * X.shape[0]))
            top = torch.topk(vals[i], min(self.num_restarts, vals.shape[1])).indices
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cand_X, _ = optimize_acqf(
                    acq, bounds=bounds, q=1, num_restarts=len(top),
                    batch_initial_conditions=blocks[i][top].unsqueeze(-2),
                    fixed_features={j: float(pre.pinned[j]) for j in range(w)} or None,
                    options={"maxiter": self.maxiter},
                    return_best_only=False, retry_on_optimization_warning=False,
                )
            Xr = self._round(cand_X.detach().reshape(-1, d))
            if w:
                Xr[:, :w] = pre.pinned
            contenders.extend((i, row) for row in Xr)
        Xc = torch.stack([row for _, row in contenders])
        final = self._screen(m, Xc, [pool[i] for i, _ in contenders], None).tolist()
        scored = sorted(
            ((v, i, row) for v, (i, row) in zip(final, contenders, strict=True)),
            key=lambda r: r[0], reverse=True,
        )
        known = self.known_keys()
        s = self.space.n_stages
        for value, i, row in scored:
            pre = pool[i]
            npin = len(pre.params)
            free = row.tolist()
            params = [copy.deepcopy(p) for p in pre.params] + [
                self.space.stage_from_unit(k, free[self.space.stage_slices[k]]) for k in range(npin, s)
            ]
            if prefix_key(params) in known:
                continue
            with torch.no_grad():
                lic = log_inverse_cost(
                    m.cost, row.unsqueeze(0), pre.cached.unsqueeze(0), pre.log_eps.unsqueeze(0),
                    torch.tensor([pre.log_train], dtype=DTYPE), torch.tensor([pre.resume]),
                    self.train_stage,
                )
            return Candidate(
                params=params, prefix_depth=pre.hits if npin else 0, source="bo",
                acq_value=value, eta=m.eta, expected_cost=float(torch.exp(-lic)),
            )
        return self.random_candidate(trial, "random")
