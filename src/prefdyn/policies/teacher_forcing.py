"""Teacher-forced batches of a generation task: the prompt followed by its reference.

SFT is one more objective of the one loop (:func:`prefdyn.losses.sft.sft_loss` takes
a :class:`~prefdyn.losses.RolloutLogps`): a :class:`ReferenceStream` yields the same
:class:`~prefdyn.policies.rollout.RolloutBatch` as the rollout stream, with the
reference response in place of a sample, so :class:`~prefdyn.policies.rollout.RolloutPolicy`
scores it and the SFT warm start (Razin et al., ICLR 2024: "Minimize cross entropy
loss over labeled inputs") and the RL phase share the policy, the step and the loop.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from prefdyn.errors import PrefdynError
from prefdyn.policies._rows import ShuffledRows
from prefdyn.policies.rollout import RolloutBatch


def teacher_forced_batch(tokenizer, prompts: Sequence[str], responses: Sequence[str], *,
                         rows: Sequence[int] | None = None, add_eos: bool = True) -> RolloutBatch:
    """Left-padded prompts followed by right-padded responses (``add_eos``: each ending with
    the tokenizer's EOS, as a sampled response that stops does); ``response_mask`` marks
    the response tokens; rewards are 0 (SFT reads none)."""
    if len(prompts) != len(responses) or not prompts:
        raise PrefdynError(f"need one response per prompt and at least one prompt; got "
                           f"{len(prompts)} prompts, {len(responses)} responses")
    enc = tokenizer(list(prompts), return_tensors="pt", padding=True, padding_side="left",
                    add_special_tokens=False)
    eos = [tokenizer.eos_token_id] if add_eos and tokenizer.eos_token_id is not None else []
    answers = [tokenizer(r, add_special_tokens=False)["input_ids"] + eos for r in responses]
    for i, ids in enumerate(answers):
        if not ids:
            raise PrefdynError(f"response {i} is empty: nothing to teach")
    T = max(map(len, answers))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    response_ids = torch.full((len(answers), T), pad, dtype=torch.long)
    response_mask = torch.zeros((len(answers), T), dtype=torch.long)
    for i, ids in enumerate(answers):
        response_ids[i, :len(ids)] = torch.tensor(ids)
        response_mask[i, :len(ids)] = 1
    n = len(prompts)
    return RolloutBatch(torch.cat([enc["input_ids"], response_ids], 1),
                        torch.cat([enc["attention_mask"], response_mask], 1), response_mask,
                        enc["input_ids"].shape[1], torch.zeros(n), torch.arange(n),
                        torch.tensor(list(rows) if rows is not None else range(n)), list(responses))


class ReferenceStream(ShuffledRows):
    """Endless shuffled teacher-forced batches of ``batch_size`` (prompt, reference) rows,
    resumable like the rollout stream (``state()`` / ``load_state()``)."""

    def __init__(self, tokenizer, prompts: Sequence[str], references: Sequence[str], *,
                 batch_size: int, seed: int = 0, add_eos: bool = True):
        if len(prompts) != len(references) or not prompts:
            raise PrefdynError(f"need one reference per prompt and at least one prompt; got "
                               f"{len(prompts)} prompts, {len(references)} references")
        if batch_size < 1:
            raise PrefdynError(f"batch_size must be >= 1, got {batch_size}")
        self.tokenizer, self.prompts, self.references = tokenizer, list(prompts), list(references)
        self.batch_size, self.add_eos = min(batch_size, len(prompts)), add_eos
        super().__init__(len(self.prompts), self.batch_size, seed)

    def __next__(self) -> RolloutBatch:
        rows = self.next_rows()
        return teacher_forced_batch(self.tokenizer, [self.prompts[r] for r in rows],
                                    [self.references[r] for r in rows], rows=rows,
                                    add_eos=self.add_eos)
