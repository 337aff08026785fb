"""Stage 4, evaluate: the target checkpoint's metrics on the validation split.

Accuracy and loss always; F1 (binary, or macro for more classes) and the
Matthews correlation, computed here in numpy so no extra dependency is needed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from stages import training
from stages.base import StageContext, StageResult
from stages.data_prep import read_table
from stages.params import EvaluateParams


def classification_metrics(labels: np.ndarray, preds: np.ndarray, num_labels: int) -> dict[str, float]:
    """Accuracy, F1 (binary: positive class 1; else macro) and multiclass MCC."""
    cm = np.zeros((num_labels, num_labels), dtype=np.float64)
    np.add.at(cm, (labels, preds), 1)
    tp = np.diag(cm)
    precision = np.divide(tp, cm.sum(0), out=np.zeros_like(tp), where=cm.sum(0) > 0)
    recall = np.divide(tp, cm.sum(1), out=np.zeros_like(tp), where=cm.sum(1) > 0)
    denom = precision + recall
    f1s = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    f1 = f1s[1] if num_labels == 2 else f1s.mean()
    n, correct = cm.sum(), tp.sum()
    t, p = cm.sum(1), cm.sum(0)
    cov = correct * n - (t * p).sum()
    norm = np.sqrt((n**2 - (p**2).sum()) * (n**2 - (t**2).sum()))
    return {"accuracy": float(correct / n), "f1": float(f1),
            "mcc": float(cov / norm) if norm > 0 else 0.0}


def run(params: Mapping[str, Any], upstream: Mapping[str, Path], workdir: Path,
        ctx: StageContext) -> StageResult:
    p = EvaluateParams.model_validate(params)
    data_dir = upstream["data_prep"]
    info = json.loads((data_dir / "info.json").read_text())
    model = training.build_model(training.ModelSpec(), "sequence", vocab_size=info["vocab_size"],
                                 max_length=info["max_length"], num_labels=info["num_labels"],
                                 seed=0, checkpoint=upstream["target_finetune"] / "checkpoint")
    model = model.to(ctx.device).eval()
    data = training.to_tensors(read_table(data_dir / "target_validation.parquet"), ctx.device)
    labels = data.pop("labels")
    logits = []
    with torch.no_grad():
        for i in range(0, int(labels.shape[0]), p.batch_size):
            logits.append(model(**{k: v[i:i + p.batch_size] for k, v in data.items()}).logits)
    all_logits = torch.cat(logits)
    loss = float(F.cross_entropy(all_logits, labels))
    preds = all_logits.argmax(-1).cpu().numpy()
    metrics = classification_metrics(labels.cpu().numpy(), preds, info["num_labels"])
    metrics["loss"] = loss
    (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2))
    ctx.logger.info("evaluate: %s", metrics)
    return StageResult(metrics=metrics)
