"""Plan: per-stage content keys and what is cached, with no I/O but lookups.

The same function prices a candidate for the tuner (`memotune plan` shows it).
The key rule itself is `cache.keys.chain_keys`; here a config becomes its
stages' key material.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cache.keys import KeyMaterial, chain_keys, material_key
from cache.store import ArtifactStore, CorruptEntryError, Manifest
from flows.config import PipelineConfig
from stages.base import Stage
from stages.pipeline import STAGES


@dataclass
class StagePlan:
    name: str
    key: str
    params: dict
    cached: bool
    compute_s: float | None  # recorded compute seconds of the cached entry
    size_bytes: int | None
    # not cached, but a checkpoint prefix is: the deepest cached epoch boundary, of how
    # many epochs, and the seconds left estimated from what reaching it took
    resume_epoch: int | None = None
    epochs: int | None = None
    remaining_s: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def stage_keys(cfg: PipelineConfig) -> list[tuple[Stage, str, dict]]:
    """(stage, key, params) in pipeline order; pure apart from hashing data files."""
    params = [cfg.stage_params(stage.name) for stage in STAGES]
    keys = chain_keys([KeyMaterial(stage=stage.name, version=stage.version, code=stage.code,
                                   params=p, inputs=stage.inputs(p) if stage.inputs else None)
                       for stage, p in zip(STAGES, params, strict=True)])
    return list(zip(STAGES, keys, params, strict=True))


def boundary_keys(planned: list[tuple[Stage, str, dict]]) -> dict[str, dict[int, str]]:
    """Per stage with checkpoint prefixes: {epoch: key of that boundary's entry}.

    A boundary's key material is the stage's, with the params of the boundary
    (`Stage.boundaries`), after the same upstream entry, under the name
    `<stage>@epoch` (so it never equals a whole stage's key)."""
    out: dict[str, dict[int, str]] = {}
    upstream: str | None = None
    for stage, key, params in planned:
        if stage.boundaries is not None:
            out[stage.name] = {
                e: material_key(KeyMaterial(stage=f"{stage.name}@epoch", version=stage.version,
                                            code=stage.code, params=bp), upstream)
                for e, bp in stage.boundaries(params).items()}
        upstream = key
    return out


def plan(cfg: PipelineConfig, store: ArtifactStore,
         keys: list[tuple[Stage, str, dict]] | None = None) -> list[StagePlan]:
    planned = keys if keys is not None else stage_keys(cfg)
    bounds = boundary_keys(planned)
    plans = []
    for stage, key, params in planned:
        manifest = _manifest(store, key)
        p = StagePlan(name=stage.name, key=key, params=params, cached=manifest is not None,
                      compute_s=manifest.compute_s if manifest else None,
                      size_bytes=manifest.total_bytes if manifest else None)
        if manifest is None:
            _price_prefix(p, store, bounds.get(stage.name, {}))
        plans.append(p)
    return plans


def _manifest(store: ArtifactStore, key: str) -> Manifest | None:
    try:
        return store.manifest(key)
    except CorruptEntryError:
        return None  # a run deletes and recomputes it; `cache verify` names it


def _price_prefix(p: StagePlan, store: ArtifactStore, boundaries: dict[int, str]) -> None:
    """A stage that will continue from its deepest cached boundary: what is left."""
    for epoch in sorted(boundaries, reverse=True):
        m = _manifest(store, boundaries[epoch])
        if m is not None:
            p.resume_epoch, p.epochs = epoch, int(p.params["epochs"])
            p.remaining_s = m.compute_s * (p.epochs - epoch) / epoch
            return
