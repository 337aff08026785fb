"""Configs the benchmarks share: `tiny` (seconds per run) and `small` (tens of seconds)."""

from __future__ import annotations

TINY = {
    "device": "cpu",
    "data_prep": {"builtin": {"n_train": 160, "n_validation": 100, "corpus_size": 300},
                  "intermediate": {"n_examples": 120}, "max_length": 24, "guidance_min": 8},
    "intermediate_finetune": {"epochs": 1, "model": {"builtin": {
        "hidden_size": 16, "layers": 1, "heads": 2, "intermediate_size": 32}}},
    "target_finetune": {"epochs": 1},
    "search": {"target_finetune": {
        "epochs": {"type": "int", "low": 1, "high": 3},
        "optimizer.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}},
        "intermediate_finetune": {"seed": {"type": "int", "low": 0, "high": 1}}},
}
# compute-bound trials (tens of seconds each), where worker start-up matters less
SMALL = {**TINY,
         "data_prep": {"builtin": {"n_train": 600, "n_validation": 200, "corpus_size": 1000},
                       "intermediate": {"n_examples": 600}, "max_length": 24, "guidance_min": 8},
         "intermediate_finetune": {"epochs": 2, "model": {"builtin": {
             "hidden_size": 32, "layers": 2, "heads": 2, "intermediate_size": 64}}},
         "target_finetune": {"epochs": 2}}

# The offline default made small (a full run in about 20 s on 2 cores) that still
# learns (tiny/small sit at chance accuracy), with constant schedules without
# warm-up: training stages keep their epoch boundaries (checkpoint prefixes).
PREFIX_STABLE = {"mode": "adamw", "lr": 1e-3, "schedule": "constant", "warmup": 0}
STUDY_SMALL = {
    "device": "cpu",
    "data_prep": {"builtin": {"n_train": 600, "n_validation": 300, "corpus_size": 2000},
                  "intermediate": {"n_examples": 1500}},
    "intermediate_finetune": {"epochs": 2, "optimizer": PREFIX_STABLE},
    "target_finetune": {"epochs": 4, "optimizer": PREFIX_STABLE},
    "search": {
        "intermediate_finetune": {
            "epochs": {"type": "int", "low": 1, "high": 3},
            "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
        "target_finetune": {
            "epochs": {"type": "int", "low": 2, "high": 8},
            "optimizer.mode": {"type": "categorical", "choices": ["adamw", "hypergradient"]},
            "optimizer.lr": {"type": "float", "low": 1e-4, "high": 3e-3, "log": True}},
    },
}
# study-small with a 9x fidelity range on the costly stage (intermediate epochs 1-9,
# rungs 1, 3, 9): where stopping a trial early saves most of its cost
STUDY_WIDE = {**STUDY_SMALL, "search": {
    **STUDY_SMALL["search"],
    "intermediate_finetune": {**STUDY_SMALL["search"]["intermediate_finetune"],
                              "epochs": {"type": "int", "low": 1, "high": 9}}}}
# study-small with 4x the target's training rows, so the target stage learns (held-out
# accuracy up to 0.99) and dominates a trial's cost once the intermediate is cached, and
# target epochs 1-9 (rungs 1, 3, 9): after one epoch the held-out accuracy already ranks
# most learning rates (at 600 rows it sits at chance for 2-3 epochs)
STUDY_TARGET = {**STUDY_SMALL,
                "data_prep": {**STUDY_SMALL["data_prep"],
                              "builtin": {**STUDY_SMALL["data_prep"]["builtin"], "n_train": 2400}},
                "search": {**STUDY_SMALL["search"], "target_finetune": {
                    **STUDY_SMALL["search"]["target_finetune"],
                    "epochs": {"type": "int", "low": 1, "high": 9}}}}
PRESETS: dict[str, dict] = {"tiny": TINY, "small": SMALL, "study-small": STUDY_SMALL,
                            "study-wide": STUDY_WIDE, "study-target": STUDY_TARGET}
