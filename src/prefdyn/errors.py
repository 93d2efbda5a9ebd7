"""User-facing errors.

A :class:`PrefdynError` is a mistake in the user's input (a malformed line, a
missing field, an unknown model path, ...). The CLI prints its message without
a traceback; library callers can catch it. Programming errors stay ordinary
exceptions so that their tracebacks are kept.
"""

from __future__ import annotations


class PrefdynError(Exception):
    """An error caused by user input; the message says what and where."""


class DataError(PrefdynError):
    """Bad data: names the file, line and field where possible."""

    def __init__(self, message: str, *, source: str | None = None, field: str | None = None):
        where = ", ".join(p for p in (source, f"field {field!r}" if field else None) if p)
        super().__init__(f"{where}: {message}" if where else message)
        self.source = source
        self.field = field


class ModelError(PrefdynError):
    """A model that cannot be found or loaded, or a token that does not fit."""


class TrainingError(PrefdynError):
    """Training went wrong (NaN/inf loss, divergence); names the step."""

    def __init__(self, message: str, *, step: int | None = None):
        super().__init__(f"step {step}: {message}" if step is not None else message)
        self.step = step
