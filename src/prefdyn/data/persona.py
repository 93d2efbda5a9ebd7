"""Loaders for anthropics/evals ``persona/`` files: one JSONL file per behavior.

Each line holds ``statement``, ``answer_matching_behavior`` and
``answer_not_matching_behavior`` (a " Yes"/" No" pair), optionally
``question`` and ``label_confidence``. The behavior's name is the file stem.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Sequence
from pathlib import Path

from prefdyn.data._jsonl import iter_jsonl, require_str
from prefdyn.data.records import PersonaItem
from prefdyn.errors import DataError

_SUFFIXES = (".jsonl.gz", ".jsonl")


def behavior_name(path: str | os.PathLike) -> str:
    """The behavior a persona file holds: its name without ``.jsonl`` / ``.jsonl.gz``."""
    name = Path(path).name
    for suffix in _SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def _parse_item(record: dict, source: str, behavior: str) -> PersonaItem:
    statement = require_str(record, "statement", source)
    matching = require_str(record, "answer_matching_behavior", source)
    not_matching = require_str(record, "answer_not_matching_behavior", source)
    if {matching.strip().lower(), not_matching.strip().lower()} != {"yes", "no"}:
        raise DataError(
            f"answers must be a Yes/No pair, got matching={matching!r}, not matching={not_matching!r}",
            source=source, field="answer_matching_behavior",
        )
    confidence = record.get("label_confidence")
    if confidence is not None and (isinstance(confidence, bool) or not isinstance(confidence, int | float)):
        raise DataError(f"expected a number, got {confidence!r}", source=source, field="label_confidence")
    return PersonaItem(
        behavior=behavior,
        statement=statement,
        answer_matching=matching,
        answer_not_matching=not_matching,
        label_confidence=None if confidence is None else float(confidence),
        source=source,
    )


def load_persona_file(path: str | os.PathLike) -> list[PersonaItem]:
    """All statements of one behavior file, in file order (blank lines skipped).

    Raises :class:`DataError` (naming ``file:line`` and the field) for malformed
    JSON, a missing field, answers that are not a Yes/No pair, an empty file, or
    a file whose statements all match with the same answer (a single class).
    """
    behavior = behavior_name(path)
    items = [_parse_item(record, source, behavior) for source, record in iter_jsonl(path)]
    if not items:
        raise DataError("no statements (empty file)", source=str(path))
    n_yes = sum(item.matching_is_yes for item in items)
    if n_yes in (0, len(items)):
        answer = items[0].answer_matching
        raise DataError(
            f"all {len(items)} statements have answer_matching_behavior {answer!r} "
            f"(first at {items[0].source}); a behavior needs both classes",
            source=str(path), field="answer_matching_behavior",
        )
    return items


def list_behaviors(path: str | os.PathLike) -> list[str]:
    """Sorted behavior names of the persona files in a directory."""
    path = Path(path)
    if not path.is_dir():
        raise DataError("not a directory", source=str(path))
    return sorted({behavior_name(p) for p in path.iterdir() if p.name.endswith(_SUFFIXES)})


def _behavior_path(directory: Path, behavior: str) -> Path:
    for suffix in _SUFFIXES[::-1]:
        candidate = directory / f"{behavior}{suffix}"
        if candidate.is_file():
            return candidate
    raise AssertionError(f"listed behavior {behavior!r} has no file")  # list_behaviors found it


def load_persona_dir(
    path: str | os.PathLike, behaviors: Sequence[str] | None = None
) -> dict[str, list[PersonaItem]]:
    """Load ``behaviors`` (default: every ``*.jsonl[.gz]`` file) from a persona directory.

    The result is ordered by behavior name. An unknown name raises
    :class:`DataError` listing the closest available names.
    """
    directory = Path(path)
    available = list_behaviors(directory)
    if not available:
        raise DataError("no *.jsonl persona files", source=str(directory))
    wanted = available if behaviors is None else sorted(set(behaviors))
    unknown = [b for b in wanted if b not in available]
    if unknown:
        hints = {b: difflib.get_close_matches(b, available, n=3, cutoff=0.5) for b in unknown}
        detail = "; ".join(
            f"{b!r}" + (f" (did you mean {', '.join(map(repr, m))}?)" if m else "") for b, m in hints.items()
        )
        raise DataError(f"unknown behavior {detail}; {len(available)} available", source=str(directory))
    return {b: load_persona_file(_behavior_path(directory, b)) for b in wanted}
