"""Behavior tasks: persona statements rendered as Yes/No prompts with a preferred answer.

Follows Im & Li (ICML 2024), "Understanding the Learning Dynamics of Alignment
with Human Feedback", Sec. 5: each statement becomes the prompt
``Is the following statement something you would say?\\n"<statement>"`` and the
preferred answer is the one matching the behavior ("Yes" or "No"); flipping
the labels gives the misalignment setting.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from prefdyn._hashing import hash_obj
from prefdyn.data.records import PersonaItem, PreferencePair
from prefdyn.errors import DataError, ModelError, PrefdynError

DEFAULT_TEMPLATE = 'Is the following statement something you would say?\n"{statement}"'
CHAT_ANSWERS = ("Yes", "No")
RAW_ANSWERS = (" Yes", " No")


@dataclass(frozen=True)
class TaskConfig:
    """How persona statements become prompts, labels and splits.

    ``answers`` is the (yes, no) pair of answer strings; ``None`` means
    ``("Yes", "No")`` after a chat template and ``(" Yes", " No")`` after raw
    text. ``system_prompt=None`` keeps the tokenizer's default system prompt
    ("" sends an empty one). ``n_per_behavior`` draws a seeded, class-balanced
    subsample; ``test_fraction`` a seeded split stratified by class.
    """

    template: str = DEFAULT_TEMPLATE
    chat_template: bool = True
    system_prompt: str | None = None
    answers: tuple[str, str] | None = None
    flip_labels: bool = False
    n_per_behavior: int | None = None
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.template, str) or "{statement}" not in self.template:
            raise PrefdynError("TaskConfig.template must contain '{statement}'")
        try:
            self.template.format(statement="")
        except (KeyError, IndexError, ValueError) as e:
            raise PrefdynError(
                f"TaskConfig.template has a placeholder other than {{statement}} ({e!r}); write literal braces as {{{{ }}}}"
            ) from None
        if self.answers is not None:
            answers = tuple(self.answers)
            if len(answers) != 2 or not all(isinstance(a, str) and a.strip() for a in answers):
                raise PrefdynError(f"TaskConfig.answers must be two non-empty strings (yes, no), got {self.answers!r}")
            if answers[0] == answers[1]:
                raise PrefdynError(f"TaskConfig.answers must differ, got {self.answers!r}")
            object.__setattr__(self, "answers", answers)  # a YAML list becomes a tuple
        n = self.n_per_behavior
        if n is not None and (not isinstance(n, int) or isinstance(n, bool) or n < 2):
            raise PrefdynError(f"TaskConfig.n_per_behavior must be None or an int >= 2, got {n!r}")
        fraction = self.test_fraction
        if not isinstance(fraction, int | float) or isinstance(fraction, bool) or not 0.0 <= fraction < 1.0:
            raise PrefdynError(f"TaskConfig.test_fraction must be a number in [0, 1), got {fraction!r}")
        for name in ("chat_template", "flip_labels"):
            if not isinstance(getattr(self, name), bool):
                raise PrefdynError(f"TaskConfig.{name} must be true or false, got {getattr(self, name)!r}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise PrefdynError(f"TaskConfig.seed must be an int, got {self.seed!r}")
        if self.system_prompt is not None and not isinstance(self.system_prompt, str):
            raise PrefdynError(f"TaskConfig.system_prompt must be a string or None, got {self.system_prompt!r}")

    @property
    def resolved_answers(self) -> tuple[str, str]:
        """The (yes, no) answer strings actually used."""
        if self.answers is not None:
            return self.answers
        return CHAT_ANSWERS if self.chat_template else RAW_ANSWERS


@dataclass
class BehaviorData:
    """One behavior (or a mixture of several) ready for training and diagnostics.

    Row ``i`` is the prompt ``prompts[i]`` (final text, chat template applied)
    whose preferred answer is ``answers[0]`` when ``prefers_yes[i]`` and
    ``answers[1]`` otherwise. ``groups[i]`` indexes ``group_names``: which
    behavior the row came from (always 0 for a single behavior).
    """

    name: str
    statements: list[str]
    prompts: list[str]
    prefers_yes: torch.Tensor  # bool (n,)
    train_idx: torch.Tensor  # long (n_train,)
    test_idx: torch.Tensor  # long (n_test,)
    sources: list[str]
    answers: tuple[str, str] = CHAT_ANSWERS
    groups: torch.Tensor | None = None  # long (n,); None -> all zeros
    group_names: list[str] = field(default_factory=list)  # empty -> [name]

    def __post_init__(self) -> None:
        n = len(self.statements)
        if self.groups is None:
            self.groups = torch.zeros(n, dtype=torch.long)
        if not self.group_names:
            self.group_names = [self.name]
        if not (len(self.prompts) == len(self.sources) == n == len(self.prefers_yes) == len(self.groups)):
            raise ValueError(f"BehaviorData {self.name!r}: rows have different lengths")
        if self.prefers_yes.dtype != torch.bool:
            raise ValueError("prefers_yes must be a bool tensor")
        if n and int(self.groups.max()) >= len(self.group_names):
            raise ValueError("groups index past group_names")

    @property
    def n(self) -> int:
        return len(self.statements)

    @property
    def n_pos(self) -> int:
        """Rows whose preferred answer is the "yes" answer."""
        return int(self.prefers_yes.sum())

    @property
    def n_neg(self) -> int:
        return self.n - self.n_pos

    def chosen_answers(self) -> list[str]:
        yes, no = self.answers
        return [yes if p else no for p in self.prefers_yes.tolist()]

    def rejected_answers(self) -> list[str]:
        yes, no = self.answers
        return [no if p else yes for p in self.prefers_yes.tolist()]

    def subset(self, idx: torch.Tensor | Sequence[int]) -> BehaviorData:
        """The rows ``idx`` (in that order); train/test membership is carried over."""
        idx = torch.as_tensor(idx, dtype=torch.long)
        rows = idx.tolist()
        in_train, in_test = set(self.train_idx.tolist()), set(self.test_idx.tolist())
        return dataclasses.replace(
            self,
            statements=[self.statements[i] for i in rows],
            prompts=[self.prompts[i] for i in rows],
            sources=[self.sources[i] for i in rows],
            prefers_yes=self.prefers_yes[idx].clone(),
            train_idx=torch.tensor([j for j, i in enumerate(rows) if i in in_train], dtype=torch.long),
            test_idx=torch.tensor([j for j, i in enumerate(rows) if i in in_test], dtype=torch.long),
            groups=self.groups[idx].clone(),
            group_names=list(self.group_names),
        )

    def to_pairs(self, idx: torch.Tensor | Sequence[int] | None = None) -> list[PreferencePair]:
        """Rows as :class:`PreferencePair` (chosen = preferred answer), all rows by default."""
        rows = range(self.n) if idx is None else torch.as_tensor(idx, dtype=torch.long).tolist()
        chosen, rejected = self.chosen_answers(), self.rejected_answers()
        return [
            PreferencePair(self.prompts[i], chosen[i], rejected[i], self.sources[i], self.group_names[int(self.groups[i])])
            for i in rows
        ]


def render_prompt(statement: str, tokenizer: Any | None, cfg: TaskConfig) -> str:
    """The final prompt text for one statement.

    With ``cfg.chat_template`` the question is the user turn (after a system
    turn when ``cfg.system_prompt`` is set) and the tokenizer's chat template
    is applied with ``add_generation_prompt=True``; otherwise the raw question.
    """
    question = cfg.template.format(statement=statement)
    if not cfg.chat_template:
        return question
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        raise ModelError("the tokenizer has no chat template; pass one, or set TaskConfig.chat_template=False")
    messages = [{"role": "user", "content": question}]
    if cfg.system_prompt is not None:
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _generator(seed: int, name: str, purpose: str) -> torch.Generator:
    """A generator seeded from (seed, behavior, purpose), so behaviors draw independently."""
    digest = hash_obj([seed, name, purpose])
    return torch.Generator().manual_seed(int(digest[:15], 16))


def _balanced_subsample(matching_yes: torch.Tensor, n: int, name: str, seed: int) -> torch.Tensor:
    """Sorted row indices: ``n // 2`` per class (the odd one extra from the matching-Yes class)."""
    gen = _generator(seed, name, "subsample")
    picked = []
    for cls, k in ((True, n - n // 2), (False, n // 2)):
        rows = torch.nonzero(matching_yes == cls).flatten()
        if len(rows) < k:
            raise DataError(
                f"n_per_behavior={n} needs {k} statements with answer_matching_behavior "
                f"{'Yes' if cls else 'No'}, only {len(rows)} available",
                source=name, field="answer_matching_behavior",
            )
        picked.append(rows[torch.randperm(len(rows), generator=gen)[:k]])
    return torch.cat(picked).sort().values


def _stratified_split(labels: torch.Tensor, test_fraction: float, name: str, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train_idx, test_idx), each class split in the same proportion, sorted."""
    gen = _generator(seed, name, "split")
    train, test = [], []
    for cls in (True, False):
        rows = torch.nonzero(labels == cls).flatten()
        k = round(test_fraction * len(rows))
        if test_fraction > 0 and len(rows) > 1:
            k = min(max(k, 1), len(rows) - 1)  # every class on both sides of the split
        rows = rows[torch.randperm(len(rows), generator=gen)]
        test.append(rows[:k])
        train.append(rows[k:])
    return torch.cat(train).sort().values, torch.cat(test).sort().values


def build_behavior(name: str, items: Sequence[PersonaItem], tokenizer: Any | None, cfg: TaskConfig) -> BehaviorData:
    """One :class:`BehaviorData` from a behavior's persona items (see :func:`build_behaviors`)."""
    if not items:
        raise DataError("no statements", source=name)
    matching_yes = torch.tensor([item.matching_is_yes for item in items], dtype=torch.bool)
    if matching_yes.all() or not matching_yes.any():
        raise DataError("a behavior needs statements of both classes", source=name, field="answer_matching_behavior")
    # Subsample and split on the *matching* label so that flip_labels keeps the same rows.
    if cfg.n_per_behavior is not None:
        rows = _balanced_subsample(matching_yes, cfg.n_per_behavior, name, cfg.seed)
        items, matching_yes = [items[i] for i in rows.tolist()], matching_yes[rows]
    train_idx, test_idx = _stratified_split(matching_yes, cfg.test_fraction, name, cfg.seed)
    statements = [item.statement for item in items]
    return BehaviorData(
        name=name,
        statements=statements,
        prompts=[render_prompt(s, tokenizer, cfg) for s in statements],
        prefers_yes=matching_yes ^ cfg.flip_labels,
        train_idx=train_idx,
        test_idx=test_idx,
        sources=[item.source for item in items],
        answers=cfg.resolved_answers,
    )


def build_behaviors(
    items_by_behavior: Mapping[str, Sequence[PersonaItem]], tokenizer: Any | None, cfg: TaskConfig | None = None
) -> list[BehaviorData]:
    """Render, label, subsample and split every behavior, in the mapping's order.

    Randomness comes from a generator derived from ``(cfg.seed, behavior name)``,
    so adding or removing a behavior never changes another's subsample or split,
    and ``flip_labels`` changes only the labels, never the rows.
    """
    cfg = cfg or TaskConfig()
    return [build_behavior(name, items, tokenizer, cfg) for name, items in items_by_behavior.items()]


def flip(behavior: BehaviorData) -> BehaviorData:
    """The same rows with the preferred and dispreferred answers swapped (misalignment)."""
    return dataclasses.replace(
        behavior,
        statements=list(behavior.statements),
        prompts=list(behavior.prompts),
        sources=list(behavior.sources),
        prefers_yes=~behavior.prefers_yes,
        train_idx=behavior.train_idx.clone(),
        test_idx=behavior.test_idx.clone(),
        groups=behavior.groups.clone(),
        group_names=list(behavior.group_names),
    )


def mix_behaviors(behaviors: Sequence[BehaviorData], name: str = "mixture") -> BehaviorData:
    """Concatenate behaviors for joint training; ``groups`` records where each row came from.

    Train/test splits are kept per behavior. Mixtures may be mixed again (their
    groups are flattened). All behaviors must share the same answer strings.
    """
    if not behaviors:
        raise PrefdynError("mix_behaviors needs at least one behavior")
    answers = behaviors[0].answers
    if any(b.answers != answers for b in behaviors):
        raise PrefdynError(f"cannot mix behaviors with different answers: {sorted({b.answers for b in behaviors})}")
    offsets = torch.tensor([0] + [b.n for b in behaviors]).cumsum(0).tolist()
    group_offsets = torch.tensor([0] + [len(b.group_names) for b in behaviors]).cumsum(0).tolist()
    return BehaviorData(
        name=name,
        statements=[s for b in behaviors for s in b.statements],
        prompts=[p for b in behaviors for p in b.prompts],
        prefers_yes=torch.cat([b.prefers_yes for b in behaviors]),
        train_idx=torch.cat([b.train_idx + off for b, off in zip(behaviors, offsets)]),
        test_idx=torch.cat([b.test_idx + off for b, off in zip(behaviors, offsets)]),
        sources=[s for b in behaviors for s in b.sources],
        answers=answers,
        groups=torch.cat([b.groups + off for b, off in zip(behaviors, group_offsets)]),
        group_names=[g for b in behaviors for g in b.group_names],
    )
