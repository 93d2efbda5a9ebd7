"""Preference-pair loaders: TRL ``prompt/chosen/rejected`` JSONL and Anthropic HH-RLHF.

Both read plain or gzipped JSON lines. TRL's convention is kept: the full texts
are ``prompt + chosen`` and ``prompt + rejected``, and a response carries its
own leading whitespace.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Literal

from prefdyn.data._jsonl import iter_jsonl, require_str
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError

logger = logging.getLogger(__name__)

PairFormat = Literal["auto", "trl", "hh"]
HH_ASSISTANT = "\n\nAssistant:"


def detect_format(record: dict[str, Any], source: str) -> Literal["trl", "hh"]:
    """``trl`` when a record has a ``prompt`` field, ``hh`` when it has only ``chosen``/``rejected``."""
    if "prompt" in record:
        return "trl"
    if "chosen" in record and "rejected" in record:
        return "hh"
    raise DataError(
        f"cannot tell the format: expected prompt/chosen/rejected (TRL) or chosen/rejected (HH-RLHF), "
        f"have {', '.join(sorted(record)) or 'no fields'}",
        source=source,
    )


def split_hh(chosen: str, rejected: str, source: str) -> tuple[str, str, str]:
    """Split two HH-RLHF dialogues at their last ``\\n\\nAssistant:`` into (prompt, chosen, rejected).

    The prompt ends with ``"\\n\\nAssistant:"``; the responses are the rest
    (usually with a leading space). The two dialogues must agree up to there.
    """
    cut_chosen, cut_rejected = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    for field, cut in (("chosen", cut_chosen), ("rejected", cut_rejected)):
        if cut < 0:
            raise DataError(f"no {HH_ASSISTANT.strip()!r} turn in the dialogue", source=source, field=field)
    end_chosen, end_rejected = cut_chosen + len(HH_ASSISTANT), cut_rejected + len(HH_ASSISTANT)
    prompt = chosen[:end_chosen]
    if rejected[:end_rejected] != prompt:
        raise DataError(
            "chosen and rejected differ before the last Assistant turn (the prompt is not shared)",
            source=source, field="rejected",
        )
    return prompt, chosen[end_chosen:], rejected[end_rejected:]


def _parse_pair(record: dict[str, Any], source: str, fmt: Literal["trl", "hh"], group: str) -> PreferencePair:
    if fmt == "trl":
        prompt = require_str(record, "prompt", source)
        chosen = require_str(record, "chosen", source)
        rejected = require_str(record, "rejected", source)
    else:
        prompt, chosen, rejected = split_hh(
            require_str(record, "chosen", source), require_str(record, "rejected", source), source
        )
        for field, response in (("chosen", chosen), ("rejected", rejected)):
            if not response.strip():
                raise DataError("empty response after the last Assistant turn", source=source, field=field)
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source, group=group)


def load_pairs(
    path: str | os.PathLike,
    *,
    format: PairFormat = "auto",
    on_error: Literal["raise", "skip"] = "raise",
    group: str = "",
) -> list[PreferencePair]:
    """Read preference pairs from a JSONL file (plain or ``.gz``).

    ``format="auto"`` decides from the first record's fields (see
    :func:`detect_format`) and holds every later line to it. Bad lines (missing
    fields, empty responses, an HH prompt that is not shared) raise
    :class:`DataError` naming ``file:line`` and the field; with
    ``on_error="skip"`` they are logged and dropped instead (the public HH-RLHF
    test split has a handful). Malformed JSON always raises.
    """
    if format not in ("auto", "trl", "hh"):
        raise DataError(f"unknown pair format {format!r}: use auto, trl or hh", source=str(path))
    if on_error not in ("raise", "skip"):
        raise DataError(f"unknown on_error {on_error!r}: use raise or skip", source=str(path))
    pairs: list[PreferencePair] = []
    skipped: list[str] = []
    fmt = None if format == "auto" else format
    for source, record in iter_jsonl(path):
        fmt = fmt or detect_format(record, source)
        try:
            pairs.append(_parse_pair(record, source, fmt, group))
        except DataError as e:
            if on_error == "raise":
                raise
            skipped.append(str(e))
    if skipped:
        logger.warning("skipped %d bad pair(s) in %s; first: %s", len(skipped), path, skipped[0])
    if not pairs:
        raise DataError("no preference pairs", source=str(path))
    return pairs
