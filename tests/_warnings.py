"""Fail a test when prefdyn's own calls make a library warn.

A deprecation warning today is an error after the next upgrade, so the suite treats one
raised by prefdyn's calls as a failure. "prefdyn's calls" is decided on the live stack,
at the moment the warning is emitted (the file and line a warning names are its
``stacklevel`` guess, and transformers' point into torch's ``Module.__call__``):

- the *emitter* is the package of the innermost frame outside the warnings and logging
  machinery (``transformers`` for its deprecations, ``torch`` for its own);
- walking outwards past the emitter's frames and call plumbing (``nn.Module.__call__``,
  ``torch.no_grad`` decorators, ``functools``, ``contextlib``), the first frame left is
  the caller; the warning is prefdyn's when that frame is prefdyn's, or when prefdyn is
  the emitter (a C-level warning raised straight from a prefdyn line, or prefdyn's own
  ``warnings.warn`` that a test did not assert with ``pytest.warns``).

A library warning about its own internals (peft calling a deprecated transformers
property, say) has another library as its caller and stays an ordinary warning.
transformers also announces deprecations through ``logger.warning_once``; a handler on its
logger applies the same rule to those messages.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from types import FrameType

MACHINERY = ("warnings", "logging", __name__)
PLUMBING = ("torch.nn.modules.module", "torch.utils._contextlib", "functools", "contextlib")
LOGGED_DEPRECATION = re.compile(r"deprecat|will be removed", re.IGNORECASE)
LIBRARY_LOGGERS = ("transformers", "peft", "accelerate")


def _module(frame: FrameType) -> str:
    return frame.f_globals.get("__name__", "")


def _package(frame: FrameType) -> str:
    return _module(frame).partition(".")[0]


def _is(frame: FrameType, names: tuple[str, ...]) -> bool:
    module = _module(frame)
    return any(module == n or module.startswith(n + ".") for n in names)


def blame(frame: FrameType | None) -> str | None:
    """``"module:line"`` of the prefdyn frame responsible for a warning emitted under
    ``frame`` (the rule of this module), or None when the warning is not prefdyn's."""
    while frame is not None and _is(frame, MACHINERY):
        frame = frame.f_back
    if frame is None:
        return None
    emitter = _package(frame)
    if emitter != "prefdyn":
        while frame is not None and (_package(frame) == emitter or _is(frame, PLUMBING)):
            frame = frame.f_back
    if frame is not None and _package(frame) == "prefdyn":
        return f"{_module(frame)}:{frame.f_lineno}"
    return None


class _LoggedDeprecations(logging.Handler):
    def __init__(self, found: list[str]):
        super().__init__(logging.WARNING)
        self.found = found

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if LOGGED_DEPRECATION.search(message) and (where := blame(sys._getframe(1))):
            self.found.append(f"{record.name} logged, called from {where}: {message}")


@contextlib.contextmanager
def prefdyn_warnings(loggers: tuple[str, ...] = LIBRARY_LOGGERS) -> Iterator[list[str]]:
    """Collect, while open, the warnings (and logged deprecations) that are prefdyn's.

    Meant to run inside pytest's own warning capture: every warning still goes on to it
    (and to its summary), including those of other code.
    """
    found: list[str] = []
    forward = warnings.showwarning

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if where := blame(sys._getframe(1)):
            found.append(f"{category.__name__} from {where}: {message}")
        forward(message, category, filename, lineno, file, line)

    handler = _LoggedDeprecations(found)
    watched = [logging.getLogger(name) for name in loggers]
    # transformers logs each `warning_once` message once per process: once per test here.
    getattr(getattr(logging.Logger, "warning_once", None), "cache_clear", lambda: None)()
    warnings.showwarning = showwarning
    for logger in watched:
        logger.addHandler(handler)
    try:
        yield found
    finally:
        warnings.showwarning = forward
        for logger in watched:
            logger.removeHandler(handler)
