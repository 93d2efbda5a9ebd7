"""A causal LM as a preference policy, for full fine-tuning and LoRA.

The sibling of :mod:`prefdyn.policies.last_layer`: :class:`LMPolicy` turns a
batch into :class:`PreferenceLogps` and goes through the same
:func:`prefdyn.training.step.training_step` and loop. DPO (Rafailov et al. 2023,
Eq. 7) needs ``log pi(y|x)`` of whole responses; two batch kinds give it:

* :class:`AnswerBatch`, single-token answers (the persona Yes/No task of Im & Li
  2024, Sec. 5): one forward pass of the prompt; ``lm_head`` is applied to the
  last position only, so the (n, T, V) logits are never built.
* :class:`PairBatch`, multi-token responses: chosen and rejected sequences in
  one concatenated forward pass; ``lm_head`` is applied to the response
  positions only and token log-probs are summed per sequence.

Reference log-probs are computed once per row with the initial model (see
:func:`reference_logps`): with LoRA by disabling the adapters, in full mode
with a frozen copy of the starting weights (as TRL's ``ref_model``).
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from prefdyn.errors import ModelError
from prefdyn.losses.types import PreferenceLogps
from prefdyn.policies._shared_prefix import decoder_hidden, last_token_hidden
from prefdyn.policies._token_logps import token_logps


class StartTensors(Protocol):
    """W(0) of a full fine-tuning run kept outside the model (on disk, see
    :class:`prefdyn.training.start_weights.StartWeights`): what the policy reads of it.
    A protocol, so the policy does not depend on where training stores the weights."""

    names: list[str]

    def tensor(self, name: str) -> Tensor:
        """W(0) of parameter ``name``."""

    def load_into(self, model: nn.Module) -> nn.Module:
        """``model`` (same architecture) with W(0) copied into it."""


@dataclass
class AnswerBatch:
    """n left-padded prompts whose answer is one token.

    input_ids / attention_mask / position_ids: (n, T); position ids come from the
    mask so each prompt sees positions 0..len-1 as it would alone. prefers_yes:
    (n,) bool. rows: (n,) long, dataset row of each prompt (keys the reference).
    """

    input_ids: Tensor
    attention_mask: Tensor
    position_ids: Tensor
    yes_id: int
    no_id: int
    prefers_yes: Tensor
    rows: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    mask: Tensor | None = None  # every row is real

    def __len__(self) -> int:
        return self.input_ids.shape[0]


def left_padded(token_ids: Sequence[Sequence[int]], pad_id: int,
                device: torch.device | str | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(input_ids, attention_mask, position_ids), each (n, T), of prompts padded on the
    left, as :class:`AnswerBatch` holds them: position ids from the mask (pads at 0), so
    each prompt sees positions 0..len-1 as it would alone."""
    n, width = len(token_ids), max(len(ids) for ids in token_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    attention_mask = torch.zeros((n, width), dtype=torch.long, device=device)
    for i, ids in enumerate(token_ids):
        input_ids[i, width - len(ids):] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, width - len(ids):] = 1
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    return input_ids, attention_mask, position_ids


@dataclass
class PairBatch:
    """n (prompt, chosen, rejected) triples as 2n right-padded sequences.

    input_ids / attention_mask / response_mask: (2n, T), rows 0..n-1 are
    prompt+chosen, rows n..2n-1 prompt+rejected. ``response_mask[i, t]`` marks the
    response tokens whose log-prob is summed (token t is predicted at t-1).
    chosen_len / rejected_len: (n,) response lengths in tokens.
    """

    input_ids: Tensor
    attention_mask: Tensor
    response_mask: Tensor
    chosen_len: Tensor
    rejected_len: Tensor
    rows: Tensor
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None
    mask: Tensor | None = None

    def __len__(self) -> int:
        return self.chosen_len.shape[0]


LMBatch = AnswerBatch | PairBatch


def apply_lora(model: nn.Module, r: int = 8, alpha: int = 32, dropout: float = 0.05,
               target_modules: Sequence[str] = ("q_proj", "v_proj"), *,
               seed: int | None = None) -> nn.Module:
    """Wrap ``model`` with LoRA adapters (peft), the setting of Im & Li 2024, App. C
    (r=8, alpha=32, dropout 0.05 on q_proj and v_proj). The adapters are injected into
    ``model``'s modules in place; only they are trainable. ``seed`` makes the
    adapters' random init reproducible without touching the global RNG."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError as e:  # pragma: no cover - peft is a declared dependency
        raise ModelError("LoRA needs peft: pip install peft") from e
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout,
                        target_modules=list(target_modules), bias="none", task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return get_peft_model(model, config)


def is_peft(model: nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "get_base_model")


class LMPolicy(nn.Module):
    """A causal LM (plain, or peft-wrapped for LoRA) exposing ``logps(batch)``.

    ``reference_model``: a frozen copy of the starting weights for full fine-tuning;
    ``None`` with a LoRA model means "the model with its adapters disabled".
    ``autocast`` (e.g. ``torch.bfloat16``): the forward's matrix products in that dtype
    under :func:`torch.autocast` (their backward too), while the weights, the optimizer
    state, the log-softmax, the log-probs and the losses stay fp32 (mixed precision, the
    usual mode on GPUs; on these 2-core CPUs with avx512_bf16 about 1.3-1.5x the fp32
    step, see the README). A single-token answer's ``lm_head`` stays fp32 (not under FSDP,
    whose bf16 gathers only bf16 weights): it is applied to one row per prompt, where
    casting the (V, d) weight and its gradient costs more than the bf16 product saves.
    """

    def __init__(self, model: nn.Module, reference_model: nn.Module | None = None, *,
                 share_prefix: bool = True, start_weights: StartTensors | None = None,
                 autocast: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.autocast = autocast
        self.reference_model = reference_model
        # Full mode without an in-memory copy: W(0) on disk; pi_ref is the model itself
        # while ``at_start`` (no update yet), else a frozen copy built from W(0) on demand.
        self.start_weights = start_weights
        self.at_start = start_weights is not None
        # AnswerBatch prompts: packed, their common token prefix once per pack and no
        # pads (exact; see prefdyn.policies._shared_prefix). False: plain padded path.
        self.share_prefix = share_prefix
        if reference_model is not None:
            reference_model.requires_grad_(False).eval()
        config = getattr(self._causal_lm(model), "config", None)
        for name in ("final_logit_softcapping", "logit_scale"):
            if getattr(config, name, None) not in (None, 1.0):
                raise ModelError(f"LMPolicy applies lm_head alone and does not support {name}")

    @property
    def sharded(self) -> bool:
        """Whether FSDP shards the weights over processes (:mod:`prefdyn.training.fsdp`)."""
        return hasattr(self, "unshard") and hasattr(self, "reshard")

    @property
    def lora(self) -> bool:
        return is_peft(self.model)

    @staticmethod
    def _causal_lm(model: nn.Module) -> nn.Module:
        # The peft wrapper's base model carries the injected adapters.
        return model.get_base_model() if is_peft(model) else model

    def _parts(self, model: nn.Module) -> tuple[nn.Module, nn.Module]:
        lm = self._causal_lm(model)
        head = lm.get_output_embeddings()
        if head is None:
            raise ModelError(f"{type(lm).__name__} has no lm_head")
        return lm.get_decoder(), head

    def _answer_vocab(self, batch: AnswerBatch, model: nn.Module | None = None) -> Tensor:
        decoder, head = self._parts(model if model is not None else self.model)
        last = last_token_hidden(decoder, batch.input_ids, batch.attention_mask, batch.position_ids,
                                 share_prefix=self.share_prefix)
        if self.autocast is None or self.sharded:  # FSDP's bf16 gathers bf16 weights
            return torch.log_softmax(head(last).float(), dim=-1)  # (n, V)
        # lm_head in fp32 under autocast: n rows only, so its bf16 copy of the (V, d)
        # weight and the copy of its gradient back cost more than the bf16 product saves
        # (SmolLM2, 16 rows, forward + backward: 78 ms in fp32 against 90 ms in bf16).
        with torch.autocast(last.device.type, enabled=False):
            return torch.log_softmax(head(last.float()), dim=-1)

    def answer_logps(self, batch: AnswerBatch, model: nn.Module | None = None
                     ) -> tuple[Tensor, Tensor]:
        """log pi(yes|x), log pi(no|x), each (n,), from the last position's hidden state."""
        logprobs = self._answer_vocab(batch, model)
        return logprobs[:, batch.yes_id], logprobs[:, batch.no_id]

    # The methods below run the model from outside the policy; under sharded training
    # (prefdyn.training.fsdp) each is registered with FSDP, so it gathers the weights it
    # uses. They never call each other.

    def answer_vocab_logps(self, batch: AnswerBatch) -> Tensor:
        """log pi(.|x) over the whole vocabulary at the answer position, (n, V) float32,
        under the trained model (one decoder pass; ``lm_head`` at the last position only)."""
        with torch.autocast(batch.input_ids.device.type, dtype=self.autocast,
                            enabled=self.autocast is not None):
            return self._answer_vocab(batch)

    def last_hidden(self, input_ids: Tensor, attention_mask: Tensor, position_ids: Tensor, *,
                    share_prefix: bool = False) -> Tensor:
        """The decoder's last hidden state at each left-padded prompt's last token, (n, d)."""
        decoder, _ = self._parts(self.model)
        return last_token_hidden(decoder, input_ids, attention_mask, position_ids,
                                 share_prefix=share_prefix)

    def pair_logps(self, batch: PairBatch, model: nn.Module | None = None
                   ) -> tuple[Tensor, Tensor]:
        """Summed response-token log-probs of chosen and rejected, each (n,)."""
        decoder, head = self._parts(model if model is not None else self.model)
        position_ids = (batch.attention_mask.cumsum(-1) - 1).clamp(min=0)
        hidden = decoder_hidden(decoder, batch.input_ids, batch.attention_mask, position_ids)
        targets = batch.response_mask[:, 1:]  # token t+1 is predicted from position t
        row_idx = targets.nonzero(as_tuple=True)[0]
        logits = head(hidden[:, :-1][targets])  # (K, V), K = response tokens only
        logps = token_logps(logits, batch.input_ids[:, 1:][targets])
        seq = logps.new_zeros(batch.input_ids.shape[0]).index_add(0, row_idx, logps)
        n = len(batch)
        return seq[:n], seq[n:]

    def _yes_no_to_pair(self, batch: AnswerBatch, yes: Tensor, no: Tensor
                        ) -> tuple[Tensor, Tensor]:
        y = batch.prefers_yes
        return torch.where(y, yes, no), torch.where(y, no, yes)

    def pair(self, batch: LMBatch, model: nn.Module | None = None) -> tuple[Tensor, Tensor]:
        """(chosen, rejected) log-probs under ``model`` (default: the trained model), fp32."""
        if not isinstance(batch, (AnswerBatch, PairBatch)):
            raise TypeError(f"LMPolicy cannot score a {type(batch).__name__}")
        device = batch.input_ids.device.type
        with torch.autocast(device, dtype=self.autocast, enabled=self.autocast is not None):
            if isinstance(batch, AnswerBatch):
                return self._yes_no_to_pair(batch, *self.answer_logps(batch, model))
            return self.pair_logps(batch, model)

    def logps(self, batch: LMBatch) -> PreferenceLogps:
        """Chosen/rejected log-probs of the batch against its stored reference."""
        if batch.ref_chosen is None or batch.ref_rejected is None:
            raise ValueError("batch has no reference log-probs: pass it through reference_logps")
        chosen, rejected = self.pair(batch)
        lengths = ((batch.chosen_len, batch.rejected_len) if isinstance(batch, PairBatch)
                   else (None, None))
        return PreferenceLogps(chosen, rejected, batch.ref_chosen, batch.ref_rejected, *lengths)

    def empty_logps(self, device: torch.device | str | None = None) -> PreferenceLogps:
        """No pairs: what a process with an empty shard reports (see training.step)."""
        return PreferenceLogps.empty(device)

    def start_tensors(self) -> Iterator[tuple[str, Tensor]]:
        """(name, W(0)) of every parameter that has a start (full mode), each read once."""
        if self.reference_model is not None:
            yield from self.reference_model.named_parameters()
        elif self.start_weights is not None:
            for name in self.start_weights.names:
                yield name, self.start_weights.tensor(name)

    def start_tensor(self, name: str) -> Tensor | None:
        """W(0) of the trained model's parameter ``name`` (full mode), else None."""
        if self.reference_model is not None:
            return dict(self.reference_model.named_parameters()).get(name)
        if self.start_weights is not None and name in self.start_weights.names:
            return self.start_weights.tensor(name)
        return None

    @contextlib.contextmanager
    def reference(self) -> Iterator[nn.Module]:
        """The reference model pi_ref, in eval mode, for the duration of the block."""
        if self.reference_model is None and self.start_weights is not None:
            if self.at_start:
                was_training = self.model.training
                self.model.eval()
                try:
                    yield self.model
                finally:
                    self.model.train(was_training)
                return
            if self.sharded:
                raise ModelError("a sharded policy cannot copy itself into pi_ref; its reference "
                                 "log-probs are computed before training (prefdyn.training.fsdp)")
            frozen = copy.deepcopy(self.model)
            self.reference_model = self.start_weights.load_into(frozen).requires_grad_(False).eval()
        if self.reference_model is not None:
            yield self.reference_model
            return
        if not self.lora:
            raise ValueError("a full fine-tuning policy needs a reference_model or start_weights")
        was_training = self.model.training
        self.model.eval()
        try:
            with self.model.disable_adapter():
                yield self.model
        finally:
            self.model.train(was_training)


@torch.no_grad()
def reference_logps(policy: LMPolicy, batch: LMBatch) -> LMBatch:
    """``batch`` with pi_ref's chosen/rejected log-probs stored (computed without grad)."""
    with policy.reference() as ref_model:
        chosen, rejected = policy.pair(batch, ref_model)
    return replace(batch, ref_chosen=chosen.detach(), ref_rejected=rejected.detach())


def to_device(batch: LMBatch | list, device: torch.device | str) -> LMBatch | list:
    """``batch`` (or a list of micro-batches) with every tensor on ``device``; the one
    place LM batches move, so library code never calls ``.cuda()``."""
    if isinstance(batch, list):
        return [to_device(b, device) for b in batch]
    moved = {f.name: getattr(batch, f.name).to(device) for f in fields(batch)
             if isinstance(getattr(batch, f.name), Tensor)}
    return replace(batch, **moved)


class ReferenceCache:
    """Reference log-probs per dataset row, computed the first time a row is drawn.

    pi_ref never changes, so each row costs one extra no-grad forward pass over the
    whole run; later epochs read the cache; a batch that arrives with reference
    log-probs keeps them. ``table`` (row -> (chosen, rejected))
    preloads it, e.g. from :func:`prefdyn.training.reference_cache.precompute_reference`.
    Lists of micro-batches are handled one micro-batch at a time.
    """

    def __init__(self, policy: LMPolicy, table: dict[int, tuple[float, float]] | None = None):
        self.policy = policy
        self._cache: dict[int, tuple[float, float]] = dict(table or {})

    def __call__(self, batch: LMBatch | list) -> LMBatch | list:
        if isinstance(batch, list):
            return [self(b) for b in batch]
        rows = batch.rows.tolist()
        if batch.ref_chosen is not None and batch.ref_rejected is not None:
            # Computed by the caller (e.g. once, before a timed run): kept as they are.
            for r, c, j in zip(rows, batch.ref_chosen.tolist(), batch.ref_rejected.tolist()):
                self._cache[r] = (c, j)
            return batch
        if not all(r in self._cache for r in rows):
            batch = reference_logps(self.policy, batch)
            for r, c, j in zip(rows, batch.ref_chosen.tolist(), batch.ref_rejected.tolist()):
                self._cache[r] = (c, j)
            return batch
        ref = torch.tensor([self._cache[r] for r in rows], dtype=torch.float32,
                           device=batch.input_ids.device)
        return replace(batch, ref_chosen=ref[:, 0], ref_rejected=ref[:, 1])

    def wrap(self, batches: Iterator[Any]) -> Iterator[Any]:
        for batch in batches:
            yield self(batch)
