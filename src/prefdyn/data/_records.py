"""One record of any pairs data set -> a :class:`PreferencePair`, tolerant of data problems.

Record shapes (TRL's preference formats and Anthropic's HH-RLHF):

* ``prompt``/``chosen``/``rejected`` strings (TRL standard, explicit prompt);
* ``prompt``/``chosen``/``rejected`` chat-message lists (TRL conversational);
* ``chosen``/``rejected`` strings only: HH-RLHF dialogues, split at the last
  ``"\\n\\nAssistant:"`` (:func:`prefdyn.data.pairs.split_hh`);
* ``chosen``/``rejected`` message lists only (TRL's implicit prompt): the messages the
  two share are the prompt.

Messages are rendered by a :class:`ChatRenderer`: the tokenizer's chat template, or
the plain rendering, which is HH-RLHF's own: ``"\\n\\nHuman: ..."`` / ``"\\n\\nAssistant: ..."``
turns (``"System"`` for a system message), the prompt ending with ``"\\n\\nAssistant:"``
and each response starting with a space, so a conversational record and the HH-RLHF
dialogue it came from load to the same pair.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from prefdyn.data.pairs import HH_ASSISTANT
from prefdyn.data.problems import Problem
from prefdyn.data.records import PreferencePair
from prefdyn.errors import DataError

_ROLES = {"user": "Human", "assistant": "Assistant", "system": "System"}
Messages = list[dict[str, Any]]


class ChatRenderer:
    """Chat messages -> text: the ``tokenizer``'s chat template, or HH's plain rendering (None)."""

    def __init__(self, tokenizer: Any | None = None):
        if tokenizer is not None and not getattr(tokenizer, "chat_template", None):
            raise DataError("the tokenizer has no chat template; render messages plainly instead")
        self.tokenizer = tokenizer

    @property
    def name(self) -> str:
        return "chat template" if self.tokenizer is not None else "plain (HH-RLHF turns)"

    def prompt(self, messages: Messages) -> str:
        if self.tokenizer is not None:
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return "".join(_plain_turn(m) for m in messages) + HH_ASSISTANT

    def response(self, prompt_messages: Messages, messages: Messages, source: str) -> str:
        if self.tokenizer is None:
            first, *rest = messages
            return " " + str(first["content"]) + "".join(_plain_turn(m) for m in rest)
        prompt = self.prompt(prompt_messages)
        full = self.tokenizer.apply_chat_template(prompt_messages + messages, tokenize=False)
        if not full.startswith(prompt):
            raise DataError("the chat template does not render the prompt as a prefix of the "
                            "conversation; use the plain rendering (--raw)", source=source)
        return full[len(prompt):]


def _plain_turn(message: dict[str, Any]) -> str:
    role = str(message["role"])
    return f"\n\n{_ROLES.get(role, role.capitalize())}: {message['content']}"


def _messages(value: Any, source: str, field: str) -> Messages:
    if not isinstance(value, list) or not all(isinstance(m, dict) and "role" in m and "content" in m
                                             for m in value):
        raise DataError("expected a string or a list of {role, content} messages", source=source, field=field)
    return value


def _require(record: dict[str, Any], field: str, source: str) -> Any:
    if field not in record or record[field] is None:
        raise DataError(f"missing field (have: {', '.join(sorted(record)) or 'none'})", source=source, field=field)
    return record[field]


def record_style(record: dict[str, Any], source: str) -> str:
    """``trl``, ``trl-chat``, ``hh`` or ``hh-chat`` (implicit-prompt messages); else a DataError."""
    chosen = _require(record, "chosen", source)
    _require(record, "rejected", source)
    chat = isinstance(chosen, list)
    if "prompt" in record:
        return "trl-chat" if chat else "trl"
    return "hh-chat" if chat else "hh"


def _split_hh_tolerant(chosen: str, rejected: str, row: int) -> tuple[str, str, str, list[Problem]]:
    cut_c, cut_r = chosen.rfind(HH_ASSISTANT), rejected.rfind(HH_ASSISTANT)
    if cut_c < 0 or cut_r < 0:
        side = "chosen" if cut_c < 0 else "rejected"
        return "", chosen, rejected, [Problem("no_assistant_turn", row, f"no 'Assistant:' turn in {side}")]
    end_c, end_r = cut_c + len(HH_ASSISTANT), cut_r + len(HH_ASSISTANT)
    prompt = chosen[:end_c]
    problems = []
    if rejected[:end_r] != prompt:
        problems.append(Problem("prompt_not_shared", row, "chosen and rejected differ before the "
                                "last Assistant turn"))
    return prompt, chosen[end_c:], rejected[end_r:], problems


def _shared_messages(chosen: Messages, rejected: Messages) -> int:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return n


def to_pair(record: dict[str, Any], style: str, row: int, source: str,
            renderer: ChatRenderer) -> tuple[PreferencePair, list[Problem]]:
    """The pair of one record of ``style`` (see :func:`record_style`) and its problems.

    A missing field is a :class:`DataError` (the data set is not in the shape it
    claims); a pair that is merely bad (an HH prompt not shared, ...) is kept and
    reported, so that record ``row`` stays pair ``row``.
    """
    chosen, rejected = _require(record, "chosen", source), _require(record, "rejected", source)
    problems: list[Problem] = []
    if style == "trl":
        prompt = _require(record, "prompt", source)
        for field, value in (("prompt", prompt), ("chosen", chosen), ("rejected", rejected)):
            if not isinstance(value, str):
                raise DataError(f"expected a string, got {type(value).__name__}", source=source, field=field)
    elif style == "trl-chat":
        prompt_msgs = _messages(_require(record, "prompt", source), source, "prompt")
        chosen_msgs, rejected_msgs = _messages(chosen, source, "chosen"), _messages(rejected, source, "rejected")
        prompt = renderer.prompt(prompt_msgs)
        chosen = renderer.response(prompt_msgs, chosen_msgs, source) if chosen_msgs else ""
        rejected = renderer.response(prompt_msgs, rejected_msgs, source) if rejected_msgs else ""
    elif style == "hh":
        if not isinstance(chosen, str) or not isinstance(rejected, str):
            raise DataError("expected chosen and rejected strings", source=source, field="chosen")
        prompt, chosen, rejected, problems = _split_hh_tolerant(chosen, rejected, row)
    elif style == "hh-chat":
        chosen_msgs, rejected_msgs = _messages(chosen, source, "chosen"), _messages(rejected, source, "rejected")
        n = _shared_messages(chosen_msgs, rejected_msgs)
        if n == 0:
            problems.append(Problem("prompt_not_shared", row, "chosen and rejected share no message"))
        prompt_msgs = chosen_msgs[:n]
        prompt = renderer.prompt(prompt_msgs) if n else ""
        chosen = renderer.response(prompt_msgs, chosen_msgs[n:], source)
        rejected = renderer.response(prompt_msgs, rejected_msgs[n:], source)
    else:
        raise AssertionError(style)
    return PreferencePair(prompt=prompt, chosen=chosen, rejected=rejected, source=source), problems


def scalar_columns(record: dict[str, Any]) -> dict[str, Any]:
    """The record's other scalar fields (candidates for ``--concept-column``)."""
    return {k: v for k, v in record.items() if k not in ("prompt", "chosen", "rejected")
            and (v is None or isinstance(v, str | int | float | bool))}


def check_column(columns: Sequence[str], name: str, source: str) -> None:
    if name not in columns:
        raise DataError(f"unknown column {name!r}; the records have: {', '.join(sorted(columns)) or 'none'}",
                        source=source)
