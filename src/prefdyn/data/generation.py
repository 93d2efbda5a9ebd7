"""Generation tasks for RL fine-tuning: prompts with one reference response each.

Razin et al. (ICLR 2024) run RL fine-tuning on generation tasks scored against
references (GRUE); the issue asks for such a task "that prefdyn builds from data it
has, for example HH-RLHF prompts with the chosen response as the reference". A
:class:`GenerationTask` is exactly what :class:`~prefdyn.policies.rollout.RolloutStream`
and the reference rewards (``exact_match``, ``rouge_l``; ``reward_model`` ignores the
reference) take: ``prompts``, ``references``, and a seeded train/test split::

    task = load_task("hh", path="../shared/data/hh-rlhf/harmless-base-test.jsonl.gz",
                     n=64, tokenizer=tok, max_prompt_tokens=96)
    train = task.split("train")
    stream = RolloutStream(model, tok, train.prompts, get_reward("rouge_l"),
                           references=train.references, group_size=4)

Tasks are registered by name (:func:`register_task`), so an experiment's ``task`` key
names one: ``"hh"`` (HH-RLHF) and ``"persona"`` (persona prompts, the matching answer
as the reference: the bandit as a generation task).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from prefdyn._hashing import hash_obj
from prefdyn.data.demo import load_demo
from prefdyn.data.pairs import load_pairs
from prefdyn.data.persona import load_persona_dir
from prefdyn.data.tasks import BehaviorData, TaskConfig, build_behavior
from prefdyn.errors import DataError, PrefdynError

HH_DATA = "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"
"""Where the HH-RLHF pairs live relative to the project root (not shipped with prefdyn)."""


@dataclass
class GenerationTask:
    """Row ``i`` is the prompt ``prompts[i]`` (final text, ready to tokenize) whose
    reference response is ``references[i]``; ``sources[i]`` names where it came from
    (``file:line``). ``train_idx`` / ``test_idx`` are a seeded split of the rows."""

    name: str
    prompts: list[str]
    references: list[str]
    sources: list[str]
    train_idx: list[int]
    test_idx: list[int]

    def __post_init__(self) -> None:
        if not (len(self.prompts) == len(self.references) == len(self.sources)):
            raise PrefdynError(f"task {self.name!r}: prompts, references and sources differ in length")
        if not self.prompts:
            raise DataError("no prompts", source=self.name)

    def __len__(self) -> int:
        return len(self.prompts)

    def subset(self, rows: Sequence[int], name: str | None = None) -> GenerationTask:
        """The rows ``rows`` in that order, all of them in ``train_idx`` (a split is one set)."""
        rows = list(rows)
        return GenerationTask(name or self.name, [self.prompts[i] for i in rows],
                              [self.references[i] for i in rows], [self.sources[i] for i in rows],
                              list(range(len(rows))), [])

    def split(self, which: str) -> GenerationTask:
        """The ``"train"`` or ``"test"`` rows as a task of their own."""
        if which not in ("train", "test"):
            raise PrefdynError(f"split must be 'train' or 'test', got {which!r}")
        rows = self.train_idx if which == "train" else self.test_idx
        return self.subset(rows, f"{self.name}/{which}")

    @property
    def content(self) -> str:
        """A hash of the rows and the split (for caches and run identities)."""
        return hash_obj([self.prompts, self.references, self.train_idx, self.test_idx])


def split_rows(n: int, test_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """A seeded (train, test) split of ``range(n)``, each sorted; both non-empty when n >= 2."""
    if not 0 <= test_fraction < 1:
        raise PrefdynError(f"test_fraction must be in [0, 1), got {test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    k = round(test_fraction * n)
    if test_fraction > 0 and n >= 2:
        k = min(max(k, 1), n - 1)
    return sorted(order[k:]), sorted(order[:k])


TaskBuilder = Callable[..., GenerationTask]
_TASKS: dict[str, TaskBuilder] = {}


def register_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator adding a task builder ``fn(**params) -> GenerationTask`` under ``name``."""

    def add(fn: TaskBuilder) -> TaskBuilder:
        if name in _TASKS:
            raise ValueError(f"task {name!r} registered twice")
        _TASKS[name] = fn
        return fn

    return add


def available_tasks() -> list[str]:
    return sorted(_TASKS)


def load_task(name: str, /, **params: Any) -> GenerationTask:
    """The task ``name`` built with ``params`` (see each builder's docstring)."""
    if name not in _TASKS:
        raise PrefdynError(f"unknown task {name!r}; available: {', '.join(available_tasks())}")
    try:
        return _TASKS[name](**params)
    except TypeError as e:
        raise PrefdynError(f"task {name!r}: {e}") from None


def _fits(tokenizer, text: str, limit: int | None) -> bool:
    if limit is None or tokenizer is None:
        return True
    return len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= limit


@register_task("hh")
def hh_task(path: str = HH_DATA, *, n: int | None = None, tokenizer=None,
            max_prompt_tokens: int | None = None, max_reference_tokens: int | None = None,
            single_turn: bool = False, test_fraction: float = 0.2, seed: int = 0
            ) -> GenerationTask:
    """HH-RLHF dialogues cut at their last ``\\n\\nAssistant:`` (the prompt ends there) with
    the *chosen* response as the reference (stripped of its leading space).

    Pairs that do not parse are skipped (the public test split has a few); with a
    ``tokenizer``, prompts over ``max_prompt_tokens`` and references over
    ``max_reference_tokens`` are left out; ``single_turn`` keeps one-turn dialogues
    only. ``n`` draws a seeded subsample of what is left, then ``test_fraction`` of
    it is held out."""
    pairs = load_pairs(path, on_error="skip")
    keep = [p for p in pairs
            if (not single_turn or p.prompt.count("\n\nHuman:") == 1)
            and _fits(tokenizer, p.prompt, max_prompt_tokens)
            and _fits(tokenizer, p.chosen.strip(), max_reference_tokens)]
    if n is not None and n < 1:
        raise PrefdynError(f"n must be >= 1, got {n}")
    if len(keep) < (n or 1):
        raise DataError(f"only {len(keep)} of {len(pairs)} HH-RLHF prompts pass the filters "
                        f"(max_prompt_tokens {max_prompt_tokens}, max_reference_tokens "
                        f"{max_reference_tokens}, single_turn {single_turn}); {n or 1} needed",
                        source=str(path))
    if n is not None:
        order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(seed)).tolist()
        keep = [keep[i] for i in sorted(order[:n])]
    train_idx, test_idx = split_rows(len(keep), test_fraction, seed)
    return GenerationTask("hh", [p.prompt for p in keep], [p.chosen.strip() for p in keep],
                          [p.source for p in keep], train_idx, test_idx)


@register_task("persona")
def persona_task(behavior: BehaviorData | None = None, *, path: str | None = None, name: str | None = None,
                 tokenizer=None, task_config: TaskConfig | None = None) -> GenerationTask:
    """Persona prompts with the answer matching the behavior as the reference (" Yes" /
    " No"): the one-step bandit as a generation task (reward ``persona``: +1 / -1).

    ``behavior``: a :class:`~prefdyn.data.tasks.BehaviorData` (its split is kept); else
    the behavior ``name`` is built from ``path`` (a persona folder; None: the bundled
    demo data) with ``task_config`` (:class:`~prefdyn.data.tasks.TaskConfig`)."""
    if behavior is None:
        if name is None:
            raise PrefdynError("persona task: give a behavior, or its name (and a path)")
        items = (load_demo([name]) if path is None else load_persona_dir(path, [name]))[name]
        behavior = build_behavior(name, items, tokenizer, task_config or TaskConfig())
    return GenerationTask(f"persona/{behavior.name}", list(behavior.prompts),
                          behavior.chosen_answers(), list(behavior.sources),
                          behavior.train_idx.tolist(), behavior.test_idx.tolist())


__all__ = [
    "HH_DATA",
    "GenerationTask",
    "available_tasks",
    "load_task",
    "register_task",
    "split_rows",
]
