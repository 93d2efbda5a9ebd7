"""Where prefdyn keeps its on-disk cache."""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "PREFDYN_CACHE"


def cache_dir(override: str | os.PathLike | None = None) -> Path:
    """The cache root: ``override``, else ``$PREFDYN_CACHE``, else ``$XDG_CACHE_HOME/prefdyn``
    (``~/.cache/prefdyn``). Created on first use."""
    if override is not None:
        root = Path(override)
    elif os.environ.get(CACHE_ENV):
        root = Path(os.environ[CACHE_ENV])
    else:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "prefdyn"
    root = root.expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root
