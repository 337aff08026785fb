"""What a person sees in the terminal when a run fails: one line, not three tracebacks.

Prefect logs a failing task's and flow's traceback to the console (and to its
API, where the UI shows them in full). On the command line memotune prints the
failure once, as one line naming the stage and the cause; `--debug` keeps
Prefect's tracebacks on the console too.
"""

from __future__ import annotations

import logging

STAGE_NOTE = "memotune stage: "


def note_stage(exc: BaseException, stage: str) -> None:
    """Remember on the exception which pipeline stage raised it (once)."""
    if not any(n.startswith(STAGE_NOTE) for n in getattr(exc, "__notes__", ())):
        exc.add_note(STAGE_NOTE + stage)


def failure_line(exc: BaseException) -> str:
    """'stage data_prep failed: ValueError: ...' (first line of the message only)."""
    stage = next((n[len(STAGE_NOTE):] for n in getattr(exc, "__notes__", ())
                  if n.startswith(STAGE_NOTE)), None)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    where = f"stage {stage} failed" if stage else "run failed"
    return f"{where}: {cause}"


class _NoTraceback(logging.Formatter):
    """Formats a copy of each record without its traceback; the record itself (which
    Prefect's API handler also formats) is left whole."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        bare = logging.makeLogRecord(record.__dict__)
        bare.exc_info = bare.exc_text = None
        return self.inner.format(bare)


def quiet_tracebacks() -> None:
    """Drop tracebacks from Prefect's console handlers (the API handler keeps them)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [
        lg for lg in logging.root.manager.loggerDict.values() if isinstance(lg, logging.Logger)]
    for lg in loggers:
        for h in lg.handlers:
            if isinstance(h, PrefectConsoleHandler) and not isinstance(h.formatter, _NoTraceback):
                h.setFormatter(_NoTraceback(h.formatter))
