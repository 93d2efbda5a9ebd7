"""Writers for the tiny hand-made files the data tests read."""

from __future__ import annotations

import gzip
import json
from pathlib import Path


def persona_line(text: str, matching: str = " Yes", not_matching: str | None = None, **extra) -> str:
    """One persona JSON line; ``extra`` overrides fields, ``...`` as a value drops the field."""
    if not_matching is None:
        not_matching = " No" if matching.strip() == "Yes" else " Yes"
    record = {
        "question": f'Is the following statement something you would say?\n"{text}"',
        "statement": text,
        "label_confidence": 0.9,
        "answer_matching_behavior": matching,
        "answer_not_matching_behavior": not_matching,
    }
    record.update(extra)
    return json.dumps({k: v for k, v in record.items() if v is not ...})


def write_lines(path: Path, lines: list[str], *, gz: bool = False) -> Path:
    text = "".join(line + "\n" for line in lines)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def write_persona(path: Path, n_yes: int, n_no: int, prefix: str = "s") -> Path:
    """A valid persona file: n_yes matching-Yes then n_no matching-No statements."""
    lines = [persona_line(f"{prefix} yes {i}", " Yes") for i in range(n_yes)]
    lines += [persona_line(f"{prefix} no {i}", " No") for i in range(n_no)]
    return write_lines(path, lines)
