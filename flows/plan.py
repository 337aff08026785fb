"""Plan: per-stage content keys and what is cached, with no I/O but lookups.

The same function prices a candidate for the tuner (`memotune plan` shows it):
key_k = sha256(stage name, version, code hash, params_k, key_{k-1}, and the
fingerprint of the data files the stage declares as inputs: their content, with
their paths in params_k replaced by their roles).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from functools import cache

from cache.keys import fingerprint_inputs, source_hash, stage_key, without_paths
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


@cache
def code_hash(stage: Stage) -> str:
    return source_hash(*stage.code)


def stage_keys(cfg: PipelineConfig) -> list[tuple[Stage, str, dict]]:
    """(stage, key, params) in pipeline order; pure apart from hashing data files."""
    out: list[tuple[Stage, str, dict]] = []
    upstream: str | None = None
    for stage in STAGES:
        params = cfg.stage_params(stage.name)
        inputs = stage.inputs(params) if stage.inputs else {}
        fingerprint = fingerprint_inputs(inputs) if stage.inputs else None
        key = stage_key(stage=stage.name, version=stage.version, code_hash=code_hash(stage),
                        params=without_paths(params, inputs), upstream=upstream,
                        data_fingerprint=fingerprint)
        out.append((stage, key, params))
        upstream = key
    return out


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
