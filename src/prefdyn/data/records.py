"""The records every loader produces and every consumer reads."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PersonaItem:
    """One line of an anthropics/evals ``persona/`` file.

    ``answer_matching`` is the raw answer that matches the behavior (" Yes" or
    " No" in the original data); ``source`` is ``"path:line"`` for error messages.
    """

    behavior: str
    statement: str
    answer_matching: str
    answer_not_matching: str
    label_confidence: float | None
    source: str

    @property
    def matching_is_yes(self) -> bool:
        return self.answer_matching.strip().lower() == "yes"


@dataclass(frozen=True)
class PreferencePair:
    """A prompt with a preferred (``chosen``) and a dispreferred (``rejected``) response.

    ``prompt + chosen`` and ``prompt + rejected`` are the full texts (TRL's
    convention: the response carries its own leading whitespace).
    """

    prompt: str
    chosen: str
    rejected: str
    source: str
    group: str = ""
