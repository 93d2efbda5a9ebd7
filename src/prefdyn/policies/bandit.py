"""The one-step bandit: a prompt, one answer token, a reward per vocabulary token.

Razin et al. (ICLR 2024) study "Expected reward for input x: $V_{\\mathbf{x}}(\\theta) =
\\mathbb{E}_{\\mathbf{y} \\sim \\pi_{\\theta}(\\cdot | \\mathbf{x})} [r(\\mathbf{x},
\\mathbf{y})]$". With one answer token (the persona task's Yes/No, or any per-prompt
target token) V_x is a sum over the vocabulary, so no generation is ever needed:
:class:`BanditPolicy` gives the exact softmax (objective ``expected_reward``) or k
sampled answers per prompt drawn from it (REINFORCE, RLOO, GRPO, PPO-clip), both from
one forward pass over the prompts; :class:`BanditStream` is its batch stream.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefdyn.data.tasks import BehaviorData
from prefdyn.errors import PrefdynError
from prefdyn.policies._rows import ShuffledRows
from prefdyn.losses.bandit import BanditLogps
from prefdyn.losses.policy_gradient import RolloutLogps
from prefdyn.models.tokens import answer_token_ids
from prefdyn.rewards.lexical import target_token_rewards


@dataclass
class BanditBatch:
    """Left-padded prompts ``(n, L)``, each prompt's reward of every token ``(n, V)``, and
    the seed of the answers sampled for it (drawn by the stream, so the stream's state
    is the run's whole sampling state: a resumed run draws the same answers)."""

    input_ids: Tensor
    attention_mask: Tensor
    rewards: Tensor
    rows: Tensor
    sample_seed: int = 0  # seeds the answers a sampling policy draws for this batch

    def __len__(self) -> int:
        return len(self.rows)


class BanditStream(ShuffledRows):
    """Endless shuffled batches of bandit prompts, epoch by epoch, resumable
    (``state()`` / ``load_state()``). ``prompt_ids``: token ids of each prompt (already
    templated); ``targets``: the rewarded answer token of each (reward ``hit``, every
    other token ``miss``: the persona task's +1 / -1)."""

    def __init__(self, prompt_ids: Sequence[Sequence[int]], targets: Sequence[int], *,
                 vocab_size: int, pad_id: int, batch_size: int, seed: int = 0,
                 hit: float = 1.0, miss: float = -1.0):
        if len(prompt_ids) != len(targets) or not prompt_ids:
            raise PrefdynError(f"need one target per prompt and at least one prompt; got "
                               f"{len(prompt_ids)} prompts, {len(targets)} targets")
        for i, ids in enumerate(prompt_ids):
            if not ids:
                raise PrefdynError(f"bandit prompt {i} is empty")
        if not 1 <= batch_size:
            raise PrefdynError(f"batch_size must be >= 1, got {batch_size}")
        self.prompt_ids = [list(p) for p in prompt_ids]
        self.table = target_token_rewards(torch.tensor(list(targets)), vocab_size, hit=hit, miss=miss)
        self.pad_id, self.batch_size = pad_id, min(batch_size, len(prompt_ids))
        super().__init__(len(self.prompt_ids), self.batch_size, seed)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def collate(self, rows: Sequence[int], sample_seed: int = 0) -> BanditBatch:
        width = max(len(self.prompt_ids[r]) for r in rows)
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            p = self.prompt_ids[r]
            ids[i, width - len(p):] = torch.tensor(p)
            mask[i, width - len(p):] = 1
        rows_t = torch.tensor(list(rows))
        return BanditBatch(ids, mask, self.table[rows_t], rows_t, sample_seed)

    def __next__(self) -> BanditBatch:
        rows = self.next_rows()
        return self.collate(rows, int(torch.randint(2**62, (), generator=self.generator)))


def persona_bandit_stream(data: BehaviorData, model: nn.Module, tokenizer, *, batch_size: int,
                          seed: int = 0) -> BanditStream:
    """The persona task as a one-step bandit: reward +1 for the preferred (``chosen``)
    answer token of each prompt, -1 for every other token of the vocabulary."""
    prompt_ids = tokenizer(data.prompts, add_special_tokens=False)["input_ids"]
    vocab_size = model.get_output_embeddings().weight.shape[0]
    return BanditStream(prompt_ids, answer_token_ids(tokenizer, data.chosen_answers()),
                        vocab_size=vocab_size, pad_id=tokenizer.pad_token_id,
                        batch_size=batch_size, seed=seed)


def answer_logits(model: nn.Module, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
    """Next-token logits after each left-padded prompt, ``(n, V)``, float32. Position ids
    count real tokens only, so a padded prompt scores as it would alone."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                logits_to_keep=1)
    return out.logits[:, -1].float()


class BanditPolicy:
    """``logps(batch)``: the exact answer distribution (:class:`BanditLogps`, for
    ``expected_reward``) when ``group_size`` is None, else ``group_size`` answers per
    prompt sampled from it with the batch's ``sample_seed`` (:class:`RolloutLogps` of
    one token, rewards read off the batch's table, group = prompt) for the sampled
    estimators. ``reference``: a frozen model for pi_ref (needed only with a KL penalty).
    ``temperature``: the policy is ``softmax(z / temperature)`` (the sampling heuristic of
    Razin et al.'s "Increasing learning rate, temperature, entropy regularization")."""

    def __init__(self, model: nn.Module, *, group_size: int | None = None,
                 reference: nn.Module | None = None, temperature: float = 1.0):
        if group_size is not None and group_size < 1:
            raise PrefdynError(f"group_size must be >= 1, got {group_size}")
        if not temperature > 0:
            raise PrefdynError(f"temperature must be > 0, got {temperature}")
        self.model, self.group_size, self.reference = model, group_size, reference
        self.temperature = temperature

    def parameters(self):
        return self.model.parameters()

    def _device(self) -> torch.device:
        return next(self.model.parameters()).device

    def logps(self, batch: BanditBatch) -> BanditLogps | RolloutLogps:
        device = self._device()
        ids, mask = batch.input_ids.to(device), batch.attention_mask.to(device)
        logps = torch.log_softmax(answer_logits(self.model, ids, mask) / self.temperature, -1)
        ref = None
        if self.reference is not None:
            with torch.no_grad():
                ref = torch.log_softmax(answer_logits(self.reference, ids, mask) / self.temperature, -1)
        table = batch.rewards.to(device)
        if self.group_size is None:
            return BanditLogps(logps, table, ref)
        k = self.group_size
        # Sampled on the CPU generator so that a run is reproducible on any device.
        probs = logps.detach().exp().cpu().double()
        gen = torch.Generator().manual_seed(batch.sample_seed)
        answers = torch.multinomial(probs, k, replacement=True, generator=gen).to(device)
        token_logps = logps.gather(-1, answers).reshape(-1, 1)       # (n*k, 1)
        rewards = table.gather(-1, answers).reshape(-1)
        groups = torch.arange(len(ids), device=device).repeat_interleave(k)
        ref_tokens = None if ref is None else ref.gather(-1, answers).reshape(-1, 1)
        return RolloutLogps(token_logps, torch.ones_like(token_logps), rewards, groups, ref_tokens)

    def empty_logps(self, device=None) -> BanditLogps | RolloutLogps:
        if self.group_size is None:
            return BanditLogps.empty(self.model.get_output_embeddings().weight.shape[0], device)
        return RolloutLogps.empty(device)
