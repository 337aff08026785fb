"""Plan: per-stage content keys and what is cached, with no I/O but lookups.

The same function prices a candidate for the tuner (`memotune plan` shows it).
The key rule itself is `cache.keys.chain_keys`; here a config becomes its
stages' key material.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cache.keys import KeyMaterial, chain_keys
from cache.store import ArtifactStore, CorruptEntryError
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

    def to_dict(self) -> dict:
        return asdict(self)


def stage_keys(cfg: PipelineConfig) -> list[tuple[Stage, str, dict]]:
    """(stage, key, params) in pipeline order; pure apart from hashing data files."""
    params = [cfg.stage_params(stage.name) for stage in STAGES]
    keys = chain_keys([KeyMaterial(stage=stage.name, version=stage.version, code=stage.code,
                                   params=p, inputs=stage.inputs(p) if stage.inputs else None)
                       for stage, p in zip(STAGES, params, strict=True)])
    return list(zip(STAGES, keys, params, strict=True))


def plan(cfg: PipelineConfig, store: ArtifactStore,
         keys: list[tuple[Stage, str, dict]] | None = None) -> list[StagePlan]:
    plans = []
    for stage, key, params in keys if keys is not None else stage_keys(cfg):
        try:
            manifest = store.manifest(key)
        except CorruptEntryError:
            manifest = None  # a run deletes and recomputes it; `cache verify` names it
        plans.append(StagePlan(
            name=stage.name, key=key, params=params, cached=manifest is not None,
            compute_s=manifest.compute_s if manifest else None,
            size_bytes=manifest.total_bytes if manifest else None))
    return plans
