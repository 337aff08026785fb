"""What every stage is: a plain function plus a name, a version and its code.

The Prefect wrapper in flows/ is the only place that knows about Prefect; a
stage only sees its params, the local folders of the upstream entries it needs,
an empty work folder to write its outputs into, and a small context.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    """Base of every stage's params: unknown keys are errors, never ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass
class StageContext:
    """Run-time settings that do not change a stage's result, so not in its key."""

    device: str = "cpu"
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("memotune"))
    progress: bool = True
    stage: str | None = None  # which stage and key this run computes: for labels only
    key: str | None = None
    # checkpoint prefixes (training stages, see stages.params.training_boundaries): a
    # boundary's saved state to continue from, and what training calls at each epoch's
    # end with (epoch, write(folder) saving the state, seconds that state took from
    # scratch): the flow writes and commits the boundaries it keeps
    resume_dir: Path | None = None
    checkpoint: Callable[[int, Callable[[Path], None], float], None] | None = None

    def label(self, stage: str) -> str:
        """'<stage> [<key prefix>]' for plot titles and messages (the key when known)."""
        name = self.stage or stage
        return f"{name} [{self.key[:12]}]" if self.key else name


@dataclass
class StageResult:
    """What a stage returns besides its files: small, JSON-safe."""

    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


RunFn = Callable[[Mapping[str, Any], Mapping[str, Path], Path, StageContext], StageResult]


@dataclass(frozen=True)
class Stage:
    """A pipeline stage: `run(params, upstream_dirs, workdir, ctx)`.

    `run` is named, "module:function", and imported only when the stage
    computes: a cache hit never loads the ML stack. `needs` names the earlier
    stages whose files `run` reads (their entries are fetched and verified
    before it starts); `code` names the modules whose source goes into the
    stage's key (read from their files, not imported), so editing them
    invalidates its cache. `inputs` names the data files the stage reads, by
    role (e.g. "target.train" -> [paths or URLs]): their content, not where
    they are, goes into its key. `boundaries` names the epoch boundaries whose
    training state a longer run would pass through (stored as entries of their
    own, so a run continues from the deepest one cached).
    """

    name: str
    version: str
    params_model: type[Params]
    run: str
    needs: tuple[str, ...] = ()
    code: tuple[str, ...] = ()
    inputs: Callable[[Mapping[str, Any]], dict[str, list[str]]] | None = None
    # params -> {epoch: params naming that epoch boundary's checkpoint} (checkpoint prefixes)
    boundaries: Callable[[Mapping[str, Any]], dict[int, dict[str, Any]]] | None = None

    def load_run(self) -> RunFn:
        """The stage's function, imported now (torch and friends with it)."""
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)
