"""Batches for LM training: persona Yes/No prompts and multi-token preference pairs.

Texts are final strings (chat template already applied) and are encoded with
``add_special_tokens=False``, as in :mod:`prefdyn.embeddings.extract`. Both
builders validate everything up front (a :class:`DataError` names the row) and
return an endless, resumable :class:`LMBatchStream` of seeded, shuffled
minibatches for :func:`prefdyn.training.loop.train`; one permutation per epoch,
from an explicit generator.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence

import torch

from prefdyn.data.records import PreferencePair
from prefdyn.data.tasks import BehaviorData
from prefdyn.errors import DataError
from prefdyn.policies.lm import AnswerBatch, PairBatch, left_padded


class LMBatchStream(Iterator):
    """Endless seeded minibatches of ``n`` rows, resumable, shardable, splittable.

    Epoch ``e`` visits the rows in the ``e``-th permutation drawn from one
    generator seeded with ``seed`` (the last minibatch of an epoch may be short).
    :meth:`state` is ``{"epoch", "position"}``; :meth:`load_state` replays the
    permutations up to that epoch, so a resumed stream continues exactly.

    ``collate(indices) -> batch`` builds a batch from positions ``0..n-1``.
    :meth:`layout` sets how each global minibatch is delivered: this process's
    shard (``rank::world``, for data-parallel runs) cut into ``micro_batches``
    near-equal pieces (a list, for gradient accumulation; a plain batch when 1).
    ``content`` is a JSON-able description of the encoded data (for cache keys).
    """

    def __init__(self, n: int, batch_size: int, seed: int, collate: Callable[[list[int]], object],
                 *, content: object = None):
        if n < 1:
            raise DataError("no training rows")
        if batch_size < 1:
            raise DataError(f"batch_size must be >= 1, got {batch_size}")
        self.n, self.batch_size, self.seed, self.collate = n, batch_size, seed, collate
        self.content = content
        self.micro_batches, self.rank, self.world = 1, 0, 1
        self._restart(0, 0)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.n // self.batch_size)

    def _restart(self, epoch: int, position: int) -> None:
        self._gen = torch.Generator().manual_seed(self.seed)
        for _ in range(epoch):
            torch.randperm(self.n, generator=self._gen)
        self.epoch, self.position = epoch, position
        self._perm = torch.randperm(self.n, generator=self._gen).tolist()

    def next_indices(self) -> list[int]:
        """The next global minibatch (positions into the data)."""
        if self.position >= self.n:
            self.epoch, self.position = self.epoch + 1, 0
            self._perm = torch.randperm(self.n, generator=self._gen).tolist()
        idx = self._perm[self.position:self.position + self.batch_size]
        self.position += len(idx)
        return idx

    def layout(self, *, micro_batches: int = 1, rank: int = 0, world: int = 1) -> LMBatchStream:
        if micro_batches < 1 or world < 1 or not 0 <= rank < world:
            raise ValueError(f"bad layout: micro_batches={micro_batches}, rank={rank}, world={world}")
        if self.batch_size < micro_batches * world:
            raise DataError(f"batch size {self.batch_size} cannot feed {world} process(es) x "
                            f"{micro_batches} micro-batch(es); use a batch size >= {micro_batches * world}")
        # An epoch's short last batch may still give a process fewer (or no) rows:
        # the gradient sync weights each process by its number of examples.
        self.micro_batches, self.rank, self.world = micro_batches, rank, world
        return self

    def __next__(self):
        idx = self.next_indices()[self.rank::self.world]
        if not idx:  # an epoch's short last batch left this process nothing
            return []
        if self.micro_batches == 1:
            return self.collate(idx)
        k = self.micro_batches
        cuts = [len(idx) * i // k for i in range(k + 1)]
        return [self.collate(idx[a:b]) for a, b in itertools.pairwise(cuts) if b > a]

    def in_order(self, batch_size: int) -> Iterator[object]:
        """Every row once, in order, ``batch_size`` at a time (e.g. for reference log-probs)."""
        for start in range(0, self.n, batch_size):
            yield self.collate(list(range(start, min(start + batch_size, self.n))))

    def state(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state(self, state: dict) -> None:
        self._restart(int(state["epoch"]), int(state["position"]))


def _pad_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise DataError("tokenizer has neither a pad nor an eos token to pad with")
    return pad


def _check_length(ids: list[int], max_length: int | None, what: str) -> None:
    if max_length is not None and len(ids) > max_length:
        raise DataError(f"{what} is {len(ids)} tokens, longer than the model's context "
                        f"({max_length}); shorten it or drop it")


def collate_prompts(token_ids: Sequence[list[int]], rows: Sequence[int], prefers_yes: torch.Tensor,
                    yes_id: int, no_id: int, pad_id: int) -> AnswerBatch:
    """Left-pad prompts into one :class:`AnswerBatch` (position ids from the mask)."""
    return AnswerBatch(*left_padded(token_ids, pad_id), yes_id, no_id,
                       prefers_yes.bool(), torch.as_tensor(list(rows), dtype=torch.long))


def answer_batches(behavior: BehaviorData, tokenizer, yes_id: int, no_id: int, batch_size: int,
                   seed: int, *, max_length: int | None = None) -> LMBatchStream:
    """Endless shuffled minibatches of ``behavior``'s train rows (``rows`` = dataset index)."""
    train_rows = behavior.train_idx.tolist()
    prompts = [behavior.prompts[i] for i in train_rows]
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    for row, ids in zip(train_rows, token_ids):
        if not ids:
            raise DataError(f"prompt of row {row} is empty", source=behavior.name, field="prompt")
        _check_length(ids, max_length, f"prompt of row {row}")
    pad_id = _pad_id(tokenizer)
    prefers_yes = behavior.prefers_yes

    def collate(idx: list[int]) -> AnswerBatch:
        rows = [train_rows[i] for i in idx]
        return collate_prompts([token_ids[i] for i in idx], rows, prefers_yes[rows],
                               yes_id, no_id, pad_id)

    content = {"kind": "answers", "rows": train_rows, "ids": token_ids, "yes": yes_id, "no": no_id,
               "prefers_yes": prefers_yes[train_rows].tolist() if train_rows else []}
    return LMBatchStream(len(train_rows), batch_size, seed, collate, content=content)


def tokenize_pair(pair: PreferencePair, tokenizer, index: int, max_length: int | None
                  ) -> tuple[list[int], int, list[int], int]:
    """(chosen ids, prompt length, rejected ids, prompt length) of one pair, checked.

    The prompt must tokenize to a prefix of prompt+response (token-level), or the
    split between "context" and "scored response" would be ill-defined.
    """
    where = f"pair {index} ({pair.source})"
    prompt_ids = tokenizer(pair.prompt, add_special_tokens=False)["input_ids"]
    if not prompt_ids:
        raise DataError(f"{where}: empty prompt; the first response token needs a context",
                        field="prompt")
    out: list = []
    for name, response in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ids = tokenizer(pair.prompt + response, add_special_tokens=False)["input_ids"]
        if ids[:len(prompt_ids)] != prompt_ids:
            raise DataError(f"{where}: the prompt's tokens are not a prefix of prompt+{name} "
                            "(the tokenizer merges across the boundary); end the prompt with "
                            "whitespace or a special token", field=name)
        if len(ids) == len(prompt_ids):
            raise DataError(f"{where}: empty {name} response", field=name)
        _check_length(ids, max_length, f"{where}: prompt+{name}")
        out += [ids, len(prompt_ids)]
    return tuple(out)  # type: ignore[return-value]


def collate_pairs(encoded: Sequence[tuple[list[int], int, list[int], int]], rows: Sequence[int],
                  pad_id: int) -> PairBatch:
    """Right-pad chosen then rejected sequences into one (2n, T) :class:`PairBatch`."""
    seqs = [(e[0], e[1]) for e in encoded] + [(e[2], e[3]) for e in encoded]
    width = max(len(ids) for ids, _ in seqs)
    input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(seqs), width), dtype=torch.long)
    response_mask = torch.zeros((len(seqs), width), dtype=torch.bool)
    for i, (ids, n_prompt) in enumerate(seqs):
        input_ids[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[i, :len(ids)] = 1
        response_mask[i, n_prompt:len(ids)] = True
    lengths = response_mask.sum(-1).float()
    n = len(encoded)
    return PairBatch(input_ids, attention_mask, response_mask, lengths[:n], lengths[n:],
                     torch.as_tensor(list(rows), dtype=torch.long))


def pair_batches(pairs: Sequence[PreferencePair], tokenizer, batch_size: int, seed: int,
                 max_length: int | None = None) -> LMBatchStream:
    """Endless shuffled minibatches of ``pairs``; ``max_length`` is the model's context
    (e.g. ``model.config.max_position_embeddings``): longer sequences are a DataError."""
    encoded = [tokenize_pair(p, tokenizer, i, max_length) for i, p in enumerate(pairs)]
    pad_id = _pad_id(tokenizer)

    def collate(idx: list[int]) -> PairBatch:
        return collate_pairs([encoded[i] for i in idx], idx, pad_id)

    return LMBatchStream(len(encoded), batch_size, seed, collate,
                         content={"kind": "pairs", "encoded": encoded})


def fixed_pair_batches(pairs: Sequence[PreferencePair], tokenizer, batch_size: int,
                       max_length: int | None = None) -> list[PairBatch]:
    """The pairs as a fixed list of :class:`PairBatch`, in order (rows 0..n-1), for
    evaluation; a malformed pair raises the :class:`DataError` of :func:`tokenize_pair`."""
    encoded = [tokenize_pair(p, tokenizer, i, max_length) for i, p in enumerate(pairs)]
    pad = _pad_id(tokenizer)
    return [collate_pairs(encoded[s:s + batch_size], list(range(s, min(s + batch_size, len(encoded)))), pad)
            for s in range(0, len(encoded), batch_size)]
