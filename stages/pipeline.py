"""The STILTs pipeline: its stages, in order, in one place.

Declarations only: params models and names. Each stage's code is imported when
it computes (`Stage.load_run`), and hashed from its files for the stage's key.
"""

from __future__ import annotations

import pkgutil

import stages.optim
from stages.base import Stage
from stages.params import (
    DataPrepParams,
    EvaluateParams,
    IntermediateParams,
    TargetParams,
    data_inputs,
    training_boundaries,
)

# every module of stages.optim: a change to any optimizer invalidates training stages
_OPTIM = ("stages.optim", *sorted(m.name for m in pkgutil.walk_packages(
    stages.optim.__path__, "stages.optim.")))
_TRAINING = ("stages.finetune", "stages.training", *_OPTIM)

STAGES: tuple[Stage, ...] = (
    Stage(name="data_prep", version="1", params_model=DataPrepParams, run="stages.data_prep:run",
          code=("stages.data_prep", "stages.builtin_world"), inputs=data_inputs),
    Stage(name="intermediate_finetune", version="1", params_model=IntermediateParams,
          run="stages.finetune:run_intermediate", needs=("data_prep",), code=_TRAINING,
          boundaries=training_boundaries),
    Stage(name="target_finetune", version="1", params_model=TargetParams,
          run="stages.finetune:run_target", needs=("data_prep", "intermediate_finetune"),
          code=_TRAINING, boundaries=training_boundaries),
    Stage(name="evaluate", version="1", params_model=EvaluateParams, run="stages.evaluate:run",
          needs=("data_prep", "target_finetune"), code=("stages.evaluate", "stages.training")),
)
STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)
BY_NAME: dict[str, Stage] = {s.name: s for s in STAGES}
