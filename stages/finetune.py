"""Stages 2 and 3: intermediate-task (STILTs) and target fine-tuning.

Both run the same training loop (stages.training). The intermediate stage
starts from the base model and trains a multiple-choice head on the real/fake
task; `enabled: false` passes the base model through unchanged. The target
stage starts from the intermediate checkpoint's encoder with a new head.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from stages import training
from stages.base import StageContext, StageResult
from stages.data_prep import read_table
from stages.params import IntermediateParams, ModelSpec, TargetParams

INTERMEDIATE_NAME, TARGET_NAME = "intermediate_finetune", "target_finetune"


def _info(data_dir: Path) -> dict[str, Any]:
    return json.loads((data_dir / "info.json").read_text())


def run_intermediate(params: Mapping[str, Any], upstream: Mapping[str, Path], workdir: Path,
                     ctx: StageContext) -> StageResult:
    p = IntermediateParams.model_validate(params)
    data_dir = upstream["data_prep"]
    info = _info(data_dir)
    common = dict(vocab_size=info["vocab_size"], max_length=info["max_length"], seed=p.seed)
    if not p.enabled:
        model = training.build_model(p.model, "sequence", num_labels=info["num_labels"], **common)
        model.save_pretrained(workdir / "checkpoint")
        return StageResult(meta={"enabled": False})
    if not info["n_choices"]:
        raise ValueError("intermediate_finetune.enabled is true but data_prep.intermediate.task "
                         "is 'none': there is no intermediate data")
    model = training.build_model(p.model, "multiple_choice", num_labels=1, **common).to(ctx.device)
    cols = training.to_tensors(read_table(data_dir / "intermediate_train.parquet"), ctx.device)
    n_guide = min(p.guidance_size, int(cols["labels"].shape[0]) // 10)
    guide = {k: v[-n_guide:] for k, v in cols.items()}
    train = {k: v[:-n_guide] for k, v in cols.items()}
    report = training.train(model, train, p, ctx, guide=guide, desc="intermediate")
    summary = training.save_outputs(model, report, workdir, ctx.label(INTERMEDIATE_NAME))
    return StageResult(metrics={"train_loss": report.final_loss}, meta={"enabled": True, **summary})


def run_target(params: Mapping[str, Any], upstream: Mapping[str, Path], workdir: Path,
               ctx: StageContext) -> StageResult:
    p = TargetParams.model_validate(params)
    data_dir = upstream["data_prep"]
    info = _info(data_dir)
    model = training.build_model(ModelSpec(), "sequence", vocab_size=info["vocab_size"],
                                 max_length=info["max_length"], num_labels=info["num_labels"],
                                 seed=p.seed,
                                 checkpoint=upstream["intermediate_finetune"] / "checkpoint")
    model = model.to(ctx.device)
    train = training.to_tensors(read_table(data_dir / "target_train.parquet"), ctx.device)
    guide = training.to_tensors(read_table(data_dir / "guidance.parquet"), ctx.device)
    report = training.train(model, train, p, ctx, guide=guide, desc="target")
    summary = training.save_outputs(model, report, workdir, ctx.label(TARGET_NAME))
    return StageResult(metrics={"train_loss": report.final_loss}, meta=summary)
