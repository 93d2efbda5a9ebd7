"""On-policy rollouts: k sampled responses per prompt from the current model, scored.

Razin et al. (ICLR 2024) maximize "$V_{\\mathbf{x}}(\\theta) = \\mathbb{E}_{\\mathbf{y} \\sim
\\pi_{\\theta}(\\cdot | \\mathbf{x})} [r(\\mathbf{x}, \\mathbf{y})]$" "via policy gradient
methods". :class:`RolloutStream` is the batch stream: each ``next()`` samples a group
of ``group_size`` responses per prompt from the model *as it is now* (batched
``model.generate`` with its KV cache; temperature, top-k, top-p through HF's warpers,
each token drawn by inverse CDF (:mod:`prefdyn.policies._sampler`); each prompt is
prefilled once and its cache copied to its k samples), scores them with a
reward (:mod:`prefdyn.rewards`) and, for a KL penalty, takes the reference's token
log-probs. :class:`RolloutPolicy` then recomputes the responses' token log-probs with
gradient for the objective (:class:`~prefdyn.losses.RolloutLogps`), inside the one
training step; where the decode's own layer inputs can stand in for that forward
(on-policy: the same weights), it is skipped (:mod:`prefdyn.policies._decode_replay`).
The sampling RNG is an explicit generator whose state is part of
``state()``, so a resumed run draws the same responses.

As TRL's ``GRPOTrainer``, the log-probs are those of the temperature-scaled softmax
(the distribution sampled from, before top-k/top-p truncation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prefdyn.errors import PrefdynError
from prefdyn.models.prepacked import prepacked_linears
from prefdyn.policies._decode_replay import (DecodeActivations, DecodeRecorder,
                                             replayed_response_logps)
from prefdyn.policies._packed_rollout import can_pack, packed_response_logps
from prefdyn.policies._reserved_cache import reserve
from prefdyn.policies._rows import ShuffledRows
from prefdyn.policies._sampler import sampling_processors
from prefdyn.policies._token_logps import token_logps
from prefdyn.losses.policy_gradient import RolloutLogps


@dataclass
class RolloutBatch:
    """``N = n_prompts * k`` sampled sequences: ``input_ids`` / ``attention_mask`` (N, L + T)
    are the left-padded prompt (``prompt_len`` = L) followed by the response;
    ``response_mask`` (N, T) marks response tokens up to and including the first EOS;
    ``rewards`` (N,), ``groups`` (N,) the prompt of each, ``rows`` (n_prompts,) their
    data rows; ``ref_logps`` (N, T) under pi_ref when a reference model was given;
    ``activations`` the decode's layer inputs, for :class:`RolloutPolicy` to skip its
    forward (:mod:`prefdyn.policies._decode_replay`; used once, then dropped)."""

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    prompt_len: int
    rewards: Tensor
    groups: Tensor
    rows: Tensor
    responses: list[str]
    ref_logps: Tensor | None = None
    activations: DecodeActivations | None = None

    def __len__(self) -> int:
        return len(self.groups)


def response_token_logps(model: nn.Module, input_ids: Tensor, attention_mask: Tensor,
                         prompt_len: int, temperature: float = 1.0) -> Tensor:
    """log pi(y_t | x, y_<t) of every response token ``(N, T)`` under the temperature-scaled
    softmax; position ids count real tokens only (left padding)."""
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    T = input_ids.shape[1] - prompt_len
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   logits_to_keep=T + 1).logits[:, :-1]
    N, V = input_ids.shape[0], logits.shape[-1]
    targets = input_ids[:, prompt_len:].reshape(-1)
    return token_logps(logits.reshape(N * T, V), targets, temperature).view(N, T)


def rollout_logps(model: nn.Module, batch: RolloutBatch, temperature: float = 1.0, *,
                  pack: bool = True) -> Tensor:
    """:func:`response_token_logps` of a batch's responses; with ``pack`` (where exact) each
    group's prompt is computed once (:mod:`prefdyn.policies._packed_rollout`), the same
    values up to float round-off."""
    if pack and can_pack(model, batch.groups, batch.input_ids, batch.attention_mask,
                         batch.response_mask, batch.prompt_len):
        return packed_response_logps(model, batch.input_ids, batch.attention_mask,
                                     batch.response_mask, batch.groups, batch.prompt_len,
                                     temperature)
    return response_token_logps(model, batch.input_ids, batch.attention_mask, batch.prompt_len,
                                temperature)


def _response_mask(response_ids: Tensor, eos_id: int | None) -> Tensor:
    """1 up to and including the first EOS of each response (generate pads after it)."""
    if eos_id is None:
        return torch.ones_like(response_ids)
    is_eos = (response_ids == eos_id).long()
    return ((is_eos.cumsum(-1) - is_eos) == 0).long()


def shared_prefill(model: nn.Module, ids: Tensor, mask: Tensor, k: int,
                   capacity: int | None = None):
    """The KV cache of each left-padded prompt but its last token, computed once and
    repeated for its ``k`` samples (``generate`` then runs the last token and samples):
    the same cache as prefilling all ``n * k`` rows, for 1/k of the compute. With
    ``capacity`` (prompt + new tokens) its layers write each decode step in place
    (:mod:`prefdyn.policies._reserved_cache`; the same values). None where the model
    generates with another cache than the dynamic one (e.g. a static or
    sliding-window cache), or a prompt is a single token (nothing to share)."""
    config = getattr(model, "generation_config", None)
    if k < 2 or ids.shape[1] < 2 or getattr(config, "cache_implementation", None) not in (
            None, "dynamic"):
        return None
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    cache = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1],
                  position_ids=position_ids[:, :-1], use_cache=True, logits_to_keep=1).cache
    if not hasattr(cache, "batch_repeat_interleave"):
        return None
    cache.batch_repeat_interleave(k)
    if capacity is not None:
        reserve(cache, capacity)
    return cache


class RolloutStream(ShuffledRows):
    """Endless on-policy batches: ``prompts_per_batch`` prompts (shuffled, epoch by epoch)
    x ``group_size`` samples each. ``reward`` is ``(prompts, responses, references) ->
    (N,)`` (a :func:`prefdyn.rewards.get_reward`); ``references`` one per prompt (or None).
    ``share_prefill``: each prompt's KV cache computed once for its k samples;
    ``prepack``: on CPU, decode through oneDNN with prepacked weights
    (:mod:`prefdyn.models.prepacked`); ``pack``: the reference's log-probs with each
    prompt once (:func:`rollout_logps`); ``replay``: keep the decode's layer inputs on the
    batch so that :class:`RolloutPolicy` skips its forward (a stream whose batches are
    not trained on needs not: they cost ~0.3 GB at 64 x 120 tokens on SmolLM2-135M)."""

    def __init__(self, model: nn.Module, tokenizer, prompts: Sequence[str], reward: Callable, *,
                 references: Sequence[str | None] | None = None, group_size: int = 4,
                 prompts_per_batch: int = 4, max_new_tokens: int = 32, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None, seed: int = 0,
                 reference: nn.Module | None = None, pack: bool = True,
                 share_prefill: bool = True, prepack: bool = True, replay: bool = True):
        if not temperature > 0:
            raise PrefdynError(
                f"temperature {temperature}: policy-gradient estimators need samples from "
                "pi_theta, and temperature 0 is greedy decoding (every sample of a group is the "
                "same response: RLOO/GRPO advantages are all 0, REINFORCE is biased); use "
                "temperature > 0, or the bandit's exact expected_reward objective")
        if group_size < 1 or prompts_per_batch < 1 or max_new_tokens < 1:
            raise PrefdynError(f"group_size, prompts_per_batch and max_new_tokens must be >= 1, got "
                               f"{group_size}, {prompts_per_batch}, {max_new_tokens}")
        if top_p is not None and not 0 < top_p <= 1:
            raise PrefdynError(f"top_p must be in (0, 1], got {top_p}")
        if not prompts:
            raise PrefdynError("no prompts to sample from")
        if references is not None and len(references) != len(prompts):
            raise PrefdynError(f"{len(prompts)} prompts but {len(references)} references")
        self.model, self.tokenizer, self.reward, self.reference = model, tokenizer, reward, reference
        self.pack, self.share_prefill, self.prepack = pack, share_prefill, prepack
        self.replay = replay and pack
        self.prompts, self.references = list(prompts), references
        self.group_size, self.prompts_per_batch = group_size, min(prompts_per_batch, len(prompts))
        self.max_new_tokens, self.temperature, self.top_k, self.top_p = (
            max_new_tokens, temperature, top_k, top_p)
        super().__init__(len(self.prompts), self.prompts_per_batch, seed)

    def __next__(self) -> RolloutBatch:
        return self.sample(self.next_rows())

    @torch.no_grad()
    def sample(self, rows: Sequence[int]) -> RolloutBatch:
        """Generate, score and (with a reference) take pi_ref's log-probs for ``rows``."""
        k, tok = self.group_size, self.tokenizer
        device = next(self.model.parameters()).device
        enc = tok([self.prompts[r] for r in rows], return_tensors="pt", padding=True,
                  padding_side="left", add_special_tokens=False)
        prompt_ids, prompt_mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
        ids, mask = prompt_ids.repeat_interleave(k, 0), prompt_mask.repeat_interleave(k, 0)
        L = ids.shape[1]
        was_training = self.model.training
        self.model.eval()
        # Our own generator drives the draws (prefdyn.policies._sampler: inverse CDF, one
        # uniform a row, instead of torch.multinomial's one exponential a vocabulary entry),
        # so the run is reproducible and resumable and the caller's RNG is untouched.
        seed = int(torch.randint(2**62, (), generator=self.generator))
        generator = torch.Generator(device).manual_seed(seed)
        processors, sampler = sampling_processors(generator, temperature=self.temperature,
                                                  top_k=self.top_k, top_p=self.top_p)
        # On CPU the decode's few-row products run on weights prepacked for oneDNN
        # (prefdyn.models.prepacked: ~2x MKL's GEMM at 16 rows); same distribution.
        packed = prepacked_linears(self.model, len(ids)) if self.prepack else nullcontext()
        recorder = DecodeRecorder(self.model) if self.replay else None
        try:
            with packed, recorder.recording() if recorder is not None else nullcontext():
                cache = (shared_prefill(self.model, prompt_ids, prompt_mask, k,
                                        capacity=L + self.max_new_tokens)
                         if self.share_prefill else None)
                # do_sample=False: the sampler has drawn each token; generate takes its argmax.
                out = self.model.generate(
                    input_ids=ids, attention_mask=mask, do_sample=False, logits_processor=processors,
                    max_new_tokens=self.max_new_tokens, pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id, use_cache=True,
                    **({"cache": cache} if cache is not None else {}))
        finally:
            self.model.train(was_training)
        if sampler.nonfinite is not None and bool(sampler.nonfinite):
            raise PrefdynError(f"sampling prompts (data rows) {list(rows)}: the model's next-token "
                               "probabilities were NaN or inf (diverged weights?)")
        response_ids = out[:, L:]
        response_mask = _response_mask(response_ids, tok.eos_token_id)
        full_mask = torch.cat([mask, response_mask], 1)
        texts = tok.batch_decode(response_ids * response_mask + tok.pad_token_id * (1 - response_mask),
                                 skip_special_tokens=True)
        prompts = [self.prompts[r] for r in rows for _ in range(k)]
        refs = (None if self.references is None
                else [self.references[r] for r in rows for _ in range(k)])
        rewards = torch.as_tensor(self.reward(prompts, texts, refs), dtype=torch.float32)
        groups = torch.arange(len(rows)).repeat_interleave(k)
        batch = RolloutBatch(out, full_mask, response_mask, L, rewards.to(device), groups.to(device),
                             torch.tensor(list(rows)), texts)
        if recorder is not None and can_pack(self.model, batch.groups, out, full_mask,
                                             response_mask, L):
            batch.activations = recorder.activations(out, full_mask, response_mask, batch.groups,
                                                     L, prefilled=cache is not None)
        if self.reference is not None:
            # No gradient through pi_ref: its forward runs on prepacked weights too.
            with prepacked_linears(self.reference) if self.prepack else nullcontext():
                batch.ref_logps = rollout_logps(self.reference, batch, self.temperature,
                                                pack=self.pack)
        return batch


class RolloutPolicy:
    """``logps(batch)``: the sampled responses' token log-probs under the model now (with
    gradient), as :class:`RolloutLogps` with the batch's rewards, groups and reference.
    ``temperature`` must be the stream's (the distribution that was sampled); ``pack``:
    each group's prompt once in the forward where exact (:func:`rollout_logps`). A batch
    that brings the decode's layer inputs, sampled with the weights the model still has,
    gets no forward: they are replayed (:mod:`prefdyn.policies._decode_replay`; the same
    log-probs and gradients up to round-off)."""

    def __init__(self, model: nn.Module, *, temperature: float = 1.0, pack: bool = True):
        if not temperature > 0:
            raise PrefdynError(f"temperature must be > 0, got {temperature}")
        self.model, self.temperature, self.pack = model, temperature, pack

    def parameters(self):
        return self.model.parameters()

    def logps(self, batch: RolloutBatch) -> RolloutLogps:
        activations = batch.activations
        if self.pack and activations is not None and activations.usable(self.model):
            logps = replayed_response_logps(self.model, activations, batch.input_ids,
                                            batch.response_mask, batch.prompt_len, self.temperature)
            if torch.is_grad_enabled():
                batch.activations = None  # the backward consumes them
        else:
            logps = rollout_logps(self.model, batch, self.temperature, pack=self.pack)
        return RolloutLogps(logps, batch.response_mask.to(logps.dtype), batch.rewards,
                            batch.groups, batch.ref_logps)

    def empty_logps(self, device=None) -> RolloutLogps:
        return RolloutLogps.empty(device)
