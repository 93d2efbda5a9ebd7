"""RL fine-tuning tasks for the vanishing-gradient experiments, in a name -> builder registry.

A task is prompts, a reward and a train/held-out split, with what RL fine-tuning and
the trackers need from it: a training stream and policy, an SFT stream and policy
(the labelled answers), and a per-input spread measurement
(:mod:`prefdyn.tracking.reward_spread`). Two ship here:

* ``persona_bandit`` -- the persona statements as a one-step bandit: reward +1 for the
  answer token matching the behavior, -1 for every other token (the ``persona``
  reward's table); mean, std and gradients are exact.
* ``persona_bandit_formats`` -- the same bandit with every other statement rendered
  through the chat template and the rest as raw text: the embedded Instruct model gives
  raw-text prompts a matching-answer probability ~1e-4 (reward std ~0.02) and chat
  prompts a few percent (std ~0.2-0.6), so one task spans both regimes (what the mixes
  of Finding III and the std bins of Finding II need).
* ``persona_completion`` -- a small multi-token task built from the same data: the
  first words of a statement are the prompt, the rest is the reference, scored by a
  lexical reward (``rouge_l`` by default; ``exact_match``, ``sentiment`` also fit);
  spreads are Monte Carlo.
* ``hh`` -- HH-RLHF dialogues up to their last assistant turn as prompts, the *chosen*
  response as the reference (:func:`prefdyn.data.generation.load_task` ``"hh"``; the
  file is ``data.path``, default the shared HH-RLHF test split), scored by ``rouge_l``
  by default; spreads are Monte Carlo.

``experiment.task`` names the task, ``experiment.reward`` overrides its reward: another
task is one ``@register_rl_task("name")`` builder ``(cfg, loaded, params) -> RLTask``
away (:func:`from_generation` turns a registered generation task into one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from prefdyn.data import (
    GenerationTask,
    build_behaviors,
    load_demo,
    load_persona_dir,
    load_task,
    mix_behaviors,
)
from prefdyn.data.generation import HH_DATA
from prefdyn.errors import PrefdynError
from prefdyn.losses.policy_gradient import RolloutLogps
from prefdyn.models import LoadedModel, answer_token_ids
from prefdyn.policies.bandit import (
    BanditBatch,
    BanditPolicy,
    BanditStream,
    answer_logits,
)
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream
from prefdyn.policies.teacher_forcing import ReferenceStream
from prefdyn.rewards import Reward, get_reward
from prefdyn.tracking.reward_spread import InputSpread, bandit_spread, sampled_spread


@dataclass
class RLTask:
    """Prompts with a reward, a train/held-out split and the labelled answers.

    ``references[i]``: the labelled response of prompt i (the SFT target; the lexical
    rewards' reference). A bandit task has ``targets`` (the rewarded token of each
    prompt) and ``hit``/``miss`` rewards; a sampled one has ``reward``.
    """

    name: str
    reward_name: str
    prompts: list[str]
    references: list[str]
    train_rows: Tensor
    test_rows: Tensor
    tokenizer: Any
    targets: list[int] | None = None
    hit: float = 1.0
    miss: float = -1.0
    reward: Reward | None = None
    max_new_tokens: int = 16
    value_range: tuple[float, float] = (0.0, 1.0)
    """The sampled reward's range (the bandit's is ``(miss, hit)``)."""

    @property
    def exact(self) -> bool:
        """One answer token: every spread and gradient exact, no sampling."""
        return self.targets is not None

    @property
    def reward_range(self) -> tuple[float, float]:
        return (self.miss, self.hit) if self.exact else self.value_range

    def _prompt_ids(self, rows: Sequence[int]) -> list[list[int]]:
        return self.tokenizer([self.prompts[r] for r in rows], add_special_tokens=False)["input_ids"]

    def bandit_stream(self, rows: Sequence[int], model: nn.Module, *, batch_size: int,
                      seed: int = 0) -> BanditStream:
        rows = list(rows)
        return BanditStream(self._prompt_ids(rows), [self.targets[r] for r in rows],
                            vocab_size=model.get_output_embeddings().weight.shape[0],
                            pad_id=self.tokenizer.pad_token_id, batch_size=batch_size,
                            seed=seed, hit=self.hit, miss=self.miss)

    def measure(self, model: nn.Module, rows: Tensor, *, k: int, grad_inputs: int = 0,
                seed: int = 0) -> InputSpread:
        """Per-input spread of ``rows`` under ``model`` (exact on the bandit)."""
        rows = rows.tolist()
        if self.exact:
            stream = self.bandit_stream(rows, model, batch_size=len(rows))
            batch = stream.collate(list(range(len(rows))))
            batch.rows = torch.tensor(rows)
            return bandit_spread(model, batch, k=k, grad_inputs=grad_inputs, seed=seed)
        return sampled_spread(model, self.tokenizer, self.prompts, self.reward, rows=rows,
                              references=self.references, k=k, max_new_tokens=self.max_new_tokens,
                              grad_inputs=grad_inputs, seed=seed)

    def rl_batches(self, model: nn.Module, rows: Tensor, *, batch_size: int, group_size: int,
                   temperature: float, seed: int, reference: nn.Module | None = None) -> Iterator:
        if self.exact:
            return self.bandit_stream(rows.tolist(), model, batch_size=batch_size, seed=seed)
        rows = rows.tolist()
        return RolloutStream(model, self.tokenizer, [self.prompts[r] for r in rows], self.reward,
                             references=[self.references[r] for r in rows], group_size=group_size,
                             prompts_per_batch=batch_size, max_new_tokens=self.max_new_tokens,
                             temperature=temperature, seed=seed, reference=reference)

    def rl_policy(self, model: nn.Module, *, sampled: bool, group_size: int, temperature: float,
                  reference: nn.Module | None = None):
        """The bandit's exact distribution (``sampled=False``: ``expected_reward``) or k sampled
        answers; a generation task's rollouts."""
        if self.exact:
            return BanditPolicy(model, group_size=group_size if sampled else None,
                                reference=reference, temperature=temperature)
        if not sampled:
            raise PrefdynError(f"task {self.name!r} generates several tokens: the exact "
                               "expected_reward objective exists only for the one-step bandit; "
                               "use reinforce, rloo, grpo or ppo_clip")
        return RolloutPolicy(model, temperature=temperature)

    def sft_batches(self, model: nn.Module, rows: Tensor, *, batch_size: int, seed: int) -> Iterator:
        """Endless shuffled batches of the labelled answers of ``rows``."""
        if self.exact:
            return self.bandit_stream(rows.tolist(), model, batch_size=batch_size, seed=seed)
        rows = rows.tolist()
        return ReferenceStream(self.tokenizer, [self.prompts[r] for r in rows],
                               [self.references[r] for r in rows], batch_size=batch_size, seed=seed)

    def sft_policy(self, model: nn.Module):
        return TargetTokenPolicy(model) if self.exact else RolloutPolicy(model)


class TargetTokenPolicy:
    """The bandit's labelled answer, teacher-forced: ``log pi(target|x)`` as a one-token
    :class:`RolloutLogps` (what ``sft`` takes); the target is the rewarded token."""

    def __init__(self, model: nn.Module):
        self.model = model

    def parameters(self):
        return self.model.parameters()

    def logps(self, batch: BanditBatch) -> RolloutLogps:
        device = next(self.model.parameters()).device
        logps = torch.log_softmax(answer_logits(self.model, batch.input_ids.to(device),
                                                batch.attention_mask.to(device)), -1)
        target = batch.rewards.to(device).argmax(-1, keepdim=True)
        token = logps.gather(-1, target)
        return RolloutLogps(token, torch.ones_like(token))


# ------------------------------------------------------------------ registry ---

TaskBuilder = Callable[[Any, LoadedModel, Any], RLTask]
_TASKS: dict[str, TaskBuilder] = {}


def register_rl_task(name: str) -> Callable[[TaskBuilder], TaskBuilder]:
    """Decorator adding an RL task builder ``(cfg, loaded, params) -> RLTask`` under ``name``."""

    def add(fn: TaskBuilder) -> TaskBuilder:
        if name in _TASKS:
            raise ValueError(f"RL task {name!r} registered twice")
        _TASKS[name] = fn
        return fn

    return add


def available_rl_tasks() -> list[str]:
    return sorted(_TASKS)


def build_rl_task(cfg, loaded: LoadedModel, params) -> RLTask:
    """The task ``params.task`` for this config, its rows cut to ``params.train_inputs`` /
    ``params.test_inputs`` (a seeded draw, so every run of the config sees the same)."""
    if params.task not in _TASKS:
        raise PrefdynError(f"unknown RL task {params.task!r}; available: "
                           f"{', '.join(available_rl_tasks())}")
    task = _TASKS[params.task](cfg, loaded, params)
    gen = torch.Generator().manual_seed(cfg.seed)
    task.train_rows = _draw(task.train_rows, params.train_inputs, gen)
    task.test_rows = _draw(task.test_rows, params.test_inputs, gen)
    if not len(task.train_rows) or not len(task.test_rows):
        raise PrefdynError(f"task {params.task!r} has {len(task.train_rows)} train and "
                           f"{len(task.test_rows)} held-out inputs; both must be non-empty "
                           "(task.test_fraction > 0)")
    return task


def _draw(rows: Tensor, limit: int | None, gen: torch.Generator) -> Tensor:
    if limit is None or len(rows) <= limit:
        return rows
    return rows[torch.randperm(len(rows), generator=gen)[:limit]].sort().values


def _persona(cfg, tokenizer):
    items = (load_persona_dir(cfg.data.path, cfg.data.behaviors) if cfg.data.path
             else load_demo(cfg.data.behaviors))
    return mix_behaviors(build_behaviors(items, tokenizer, cfg.task), name="persona")


def from_generation(gen: GenerationTask, tokenizer, *, name: str, reward_name: str,
                    **kwargs: Any) -> RLTask:
    """The RL task of a generation task's prompts, references and split."""
    return RLTask(name, reward_name, list(gen.prompts), list(gen.references),
                  torch.tensor(gen.train_idx, dtype=torch.long),
                  torch.tensor(gen.test_idx, dtype=torch.long), tokenizer, **kwargs)


def _sampled(name: str, gen: GenerationTask, loaded: LoadedModel, params) -> RLTask:
    """A generation task scored by ``params.reward`` (default ``rouge_l``) on samples."""
    reward = params.reward or "rouge_l"
    return from_generation(gen, loaded.tokenizer, name=name, reward_name=reward,
                           reward=get_reward(reward), max_new_tokens=params.max_new_tokens,
                           value_range=(-1.0, 1.0) if reward == "sentiment" else (0.0, 1.0))


def _persona_reward(params) -> None:
    if params.reward not in (None, "persona"):
        raise PrefdynError(f"{params.task}'s reward is the persona answer (+1/-1); got "
                           f"experiment.reward {params.reward!r}")


@register_rl_task("persona_bandit")
def persona_bandit(cfg, loaded: LoadedModel, params) -> RLTask:
    """Persona prompts; reward +1 for the matching answer token, -1 for any other token."""
    _persona_reward(params)
    gen = load_task("persona", behavior=_persona(cfg, loaded.tokenizer))
    return from_generation(gen, loaded.tokenizer, name="persona_bandit", reward_name="persona",
                           targets=answer_token_ids(loaded.tokenizer, gen.references))


@register_rl_task("persona_bandit_formats")
def persona_bandit_formats(cfg, loaded: LoadedModel, params) -> RLTask:
    """Even rows chat-templated, odd rows raw text (``task.chat_template`` is ignored)."""
    _persona_reward(params)
    task_cfgs = [dataclasses.replace(cfg.task, chat_template=c, answers=None) for c in (True, False)]
    chat, raw = (_persona(dataclasses.replace(cfg, task=t), loaded.tokenizer) for t in task_cfgs)
    if chat.statements != raw.statements:  # the subsample and split depend on the seed only
        raise PrefdynError("chat and raw renderings drew different statements")
    answers = [chat.chosen_answers(), raw.chosen_answers()]
    prompts = [(chat, raw)[i % 2].prompts[i] for i in range(chat.n)]
    chosen = [answers[i % 2][i] for i in range(chat.n)]
    return RLTask("persona_bandit_formats", "persona", prompts, chosen, chat.train_idx,
                  chat.test_idx, loaded.tokenizer,
                  targets=answer_token_ids(loaded.tokenizer, chosen))


@register_rl_task("persona_completion")
def persona_completion(cfg, loaded: LoadedModel, params) -> RLTask:
    """A statement's first half (words) as the prompt, its second half the reference."""
    data = _persona(cfg, loaded.tokenizer)
    prompts, refs = [], []
    for s in data.statements:
        words = s.split()
        cut = max(1, len(words) // 2)
        prompts.append(" ".join(words[:cut]))
        refs.append(" " + " ".join(words[cut:]) if len(words) > 1 else " .")
    gen = GenerationTask("persona_completion", prompts, refs, list(data.sources),
                         data.train_idx.tolist(), data.test_idx.tolist())
    return _sampled("persona_completion", gen, loaded, params)


HH_MAX_PROMPT_TOKENS = 192
"""Longer HH-RLHF dialogues are left out of the ``hh`` task (each sample re-reads the
prompt; most single- and two-turn dialogues fit)."""


@register_rl_task("hh")
def hh(cfg, loaded: LoadedModel, params) -> RLTask:
    """HH-RLHF prompts (``data.path``: an HH-format JSONL file, default the shared test
    split) with the chosen response as the reference; ``task.test_fraction`` held out
    with ``task.seed``, then ``experiment.train_inputs`` / ``test_inputs`` drawn."""
    gen = load_task("hh", path=cfg.data.path or HH_DATA, tokenizer=loaded.tokenizer,
                    max_prompt_tokens=HH_MAX_PROMPT_TOKENS,
                    test_fraction=cfg.task.test_fraction, seed=cfg.task.seed)
    return _sampled("hh", gen, loaded, params)
