"""Study names and where a study lives in the store.

Kept apart from flows.tune so the CLI can check a study name before it
imports Prefect (Prefect reads its API URL when it is first imported, and the
CLI chooses that URL after validating the input).
"""

from __future__ import annotations

import re
import time

from flows.config import PipelineConfig

__all__ = ["StudyError", "new_study_name", "study_doc_name"]

STUDY_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,80}$")


class StudyError(ValueError):
    """A study that cannot be started or resumed (the message names it)."""


def study_doc_name(study: str) -> str:
    if not STUDY_NAME.match(study):
        raise StudyError(f"study name {study!r}: use lowercase letters, digits, '-' and '_'")
    return f"studies/{study}/study.json"


def new_study_name(cfg: PipelineConfig, tuner: str) -> str:
    base = re.sub(r"[^a-z0-9_-]+", "-", cfg.name.lower()).strip("-") or "study"
    return f"{base}-{tuner}-{time.strftime('%Y%m%d-%H%M%S')}"
