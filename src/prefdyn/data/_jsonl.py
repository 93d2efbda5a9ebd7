"""A JSON-lines reader shared by the loaders: plain or gzip, errors name ``file:line``."""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prefdyn.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield ``("path:line", record)`` for each non-blank line of a JSONL file.

    Gzip is detected from the file's magic bytes, not its suffix. A line that is
    not valid JSON, or not a JSON object, raises :class:`DataError` naming it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("no such file", source=str(path))
    opener = gzip.open if _is_gzip(path) else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for lineno, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                source = f"{path}:{lineno}"
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(f"malformed JSON ({e.msg} at column {e.colno})", source=source) from None
                if not isinstance(record, dict):
                    raise DataError(f"expected a JSON object, got {type(record).__name__}", source=source)
                yield source, record
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as e:
        raise DataError(f"cannot read file ({e})", source=str(path)) from None


def require_str(record: dict[str, Any], field: str, source: str, *, allow_empty: bool = False) -> str:
    """``record[field]`` as a string; a missing, non-string or empty value raises :class:`DataError`."""
    if field not in record:
        raise DataError(f"missing field (have: {', '.join(sorted(record)) or 'none'})", source=source, field=field)
    value = record[field]
    if not isinstance(value, str):
        raise DataError(f"expected a string, got {type(value).__name__}", source=source, field=field)
    if not allow_empty and not value.strip():
        raise DataError("empty value", source=source, field=field)
    return value
