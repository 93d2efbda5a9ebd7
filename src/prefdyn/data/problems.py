"""Data problems found while diagnosing a preference data set, each with its record number.

A diagnosis reports problems instead of raising on them (``--strict`` raises on
the first): one bad pair should not hide what the rest of the data predicts. The
record number is the pair's index in load order (0-based), which is also the
index ``prefdyn filter`` and the diagnosis' per-pair lists use.

Kinds (:data:`PROBLEM_KINDS`):

* ``duplicate``: the same (prompt, chosen, rejected) as an earlier record (named in the detail);
* ``identical``: chosen == rejected (DPO's gradient on it is zero);
* ``empty``: an empty or whitespace-only response;
* ``truncated``: a response of at least :data:`TRUNCATION_MIN_WORDS` words whose last
  character is a letter, digit, comma, colon, semicolon or hyphen: it stops mid-sentence
  (prefdyn's heuristic, e.g. a generation cut at its token limit);
* ``over_context``: prompt + response is longer than the model's context;
* ``prompt_not_shared`` and ``no_assistant_turn``: HH-RLHF dialogues that do not split into
  one shared prompt and two responses (found by the loader, :mod:`prefdyn.data.sources`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError

PROBLEM_KINDS = ("duplicate", "identical", "empty", "truncated", "over_context",
                 "prompt_not_shared", "no_assistant_turn")
TRUNCATION_MIN_WORDS = 4
# Kinds after which a pair cannot be run through the model as (shared prompt, two responses).
UNUSABLE_KINDS = frozenset({"empty", "over_context", "prompt_not_shared", "no_assistant_turn"})


@dataclass(frozen=True)
class Problem:
    """One problem of one record: ``kind`` (one of :data:`PROBLEM_KINDS`), ``record`` (pair index)."""

    kind: str
    record: int
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


def looks_truncated(response: str) -> bool:
    """True when a response of several words stops mid-sentence (module docstring)."""
    text = response.strip()
    if len(text.split()) < TRUNCATION_MIN_WORDS:
        return False
    last = text[-1]
    return last.isalnum() or last in ",:;-"


def find_problems(pairs: Sequence[PreferencePair], *,
                  token_length: Callable[[str, str], int] | None = None,
                  max_length: int | None = None) -> list[Problem]:
    """Every duplicate, identical, empty, truncated and (given ``token_length(prompt, response)``
    and ``max_length``) over-context record, in record order."""
    problems: list[Problem] = []
    first_seen: dict[tuple[str, str, str], int] = {}
    for i, pair in enumerate(pairs):
        key = (pair.prompt, pair.chosen, pair.rejected)
        if key in first_seen:
            problems.append(Problem("duplicate", i, f"same pair as record {first_seen[key]}"))
        else:
            first_seen[key] = i
        if pair.chosen == pair.rejected:
            problems.append(Problem("identical", i, "chosen == rejected"))
        for side, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
            if not response.strip():
                problems.append(Problem("empty", i, f"empty {side} response"))
            elif looks_truncated(response):
                problems.append(Problem("truncated", i, f"{side} ends mid-sentence: ...{response.strip()[-30:]!r}"))
            if token_length is not None and max_length is not None and response.strip():
                n = token_length(pair.prompt, response)
                if n > max_length:
                    problems.append(Problem("over_context", i, f"prompt + {side} is {n} tokens "
                                            f"(context {max_length})"))
    return problems


def unusable_records(problems: Sequence[Problem]) -> set[int]:
    """Records that cannot be run through the model as a shared prompt with two responses."""
    return {p.record for p in problems if p.kind in UNUSABLE_KINDS}


def raise_if_strict(problems: Sequence[Problem], strict: bool, source: str) -> None:
    """With ``strict``, the first problem as a :class:`DataError`; else nothing."""
    if strict and problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise DataError(f"record {first.record}: {first.kind}: {first.detail}{more}; "
                        "drop --strict to report problems instead", source=source)
