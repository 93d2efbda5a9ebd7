"""The probe set of a TRL run: which pairs, their concepts, their batches and W(0).

TRL's ``DPOTrainer`` tokenizes its ``train_dataset`` in place (columns ``prompt_ids``,
``chosen_ids``, ``rejected_ids``, the end-of-turn token included); the probe batches
are built from those columns, so prefdyn scores exactly the tokens TRL trains on.
A pair's index is its position in ``trainer.train_dataset``: the data's load order when
the data set was built from the same file in the same order (as ``prefdyn diagnose``
loads it).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from prefdyn.errors import DataError
from prefdyn.policies.lm import AnswerBatch, PairBatch, left_padded
from prefdyn.tracking.concepts import read_diagnosis
from prefdyn.training.lm_data import collate_pairs

TRL_COLUMNS = ("prompt_ids", "chosen_ids", "rejected_ids")


def resolve_concepts(concepts: Any, dataset: Any, names: Sequence[str] | None = None, *,
                     pair_index: Sequence[int] | None = None) -> tuple[Tensor, list[str]]:
    """(concept of every row of ``dataset`` (N,) long, concept names) from ``concepts``:

    * None: one concept, ``"all"``;
    * a path to a ``diagnosis.json`` (``prefdyn diagnose``): its assignment and names;
    * the name of a column of ``dataset`` (a category, a source): one concept per value,
      in sorted order;
    * a sequence of ints, one per pair, named by ``names`` (default ``concept_<i>``).

    A diagnosis or a list is indexed by the rows' pair indices ``pair_index`` (default: the
    row positions, and then it must cover exactly the data set's rows).
    """
    n = len(dataset)
    if concepts is None:
        return torch.zeros(n, dtype=torch.long), ["all"]
    columns = getattr(dataset, "column_names", None) or []
    if isinstance(concepts, str) and concepts in columns:
        values = [str(v) for v in dataset[concepts]]
        names = sorted(set(values))
        return torch.tensor([names.index(v) for v in values], dtype=torch.long), names
    if isinstance(concepts, (str, Path)):
        if not Path(concepts).is_file():
            raise DataError(f"concepts={str(concepts)!r} is neither a column of the data set "
                            f"({', '.join(columns)}) nor a diagnosis.json file")
        diagnosis = read_diagnosis(concepts)
        assignment = diagnosis["concepts"]["assignment"]
        names = [item["name"] for item in diagnosis["concepts"]["items"]]
    else:
        assignment = list(concepts)
        names = list(names) if names is not None else [f"concept_{i}" for i in range(max(assignment) + 1)]
    if pair_index is None:
        if len(assignment) != n:
            raise DataError(f"{len(assignment)} concept assignments for {n} pairs in the trainer's "
                            "train_dataset: the diagnosis must be of the same data, in the same order "
                            "(or name the column of pair indices: index_column)")
        pair_index = range(n)
    elif max(pair_index) >= len(assignment):
        raise DataError(f"pair index {max(pair_index)} but {len(assignment)} concept assignments: "
                        "the diagnosis must be of the same data")
    table = torch.as_tensor(assignment, dtype=torch.long)
    return table[torch.as_tensor(list(pair_index), dtype=torch.long)], names


def by_pair(concept_of_row: Tensor, pair_index: Sequence[int]) -> Tensor:
    """The concepts indexed by pair index (what a batch's ``rows`` hold); pairs that are not
    rows of the data set get concept 0 (they are never scored)."""
    table = torch.zeros(max(pair_index) + 1, dtype=torch.long)
    table[torch.as_tensor(list(pair_index), dtype=torch.long)] = concept_of_row
    return table


def probe_indices(probe: int | Sequence[int], concepts: Tensor) -> list[int]:
    """The probe rows: ``probe`` itself when it lists positions; for an int n, n rows taken
    round-robin over the concepts (the first pair of each, then the second, ...), so a
    small probe still covers every concept."""
    if not isinstance(probe, int):
        return sorted(int(i) for i in probe)
    if probe < 2:
        raise DataError(f"the probe needs at least 2 pairs, got {probe}")
    by_concept = [(concepts == c).nonzero().flatten().tolist() for c in range(int(concepts.max()) + 1)]
    order = sorted((rank, c, i) for c, rows in enumerate(by_concept) for rank, i in enumerate(rows))
    return sorted(i for _, _, i in order[:probe])


def truncate(ids: list[int], n_prompt: int, max_length: int | None, mode: str) -> tuple[list[int], int]:
    """(ids, prompt length) cut to ``max_length`` as TRL's ``DataCollatorForPreference`` cuts
    each prompt+response sequence: its start kept (``keep_start``) or its end (``keep_end``)."""
    if max_length is None or len(ids) <= max_length:
        return ids, n_prompt
    if mode == "keep_start":
        return ids[:max_length], min(n_prompt, max_length)
    if mode == "keep_end":
        return ids[-max_length:], max(0, n_prompt - (len(ids) - max_length))
    raise DataError(f"unknown truncation_mode {mode!r}: TRL has keep_start and keep_end")


def pair_batches(dataset: Any, positions: Sequence[int], pad_id: int, batch_size: int,
                 pair_index: Sequence[int] | None = None, *, max_length: int | None = None,
                 truncation_mode: str = "keep_start") -> list[PairBatch]:
    """The probe rows (``positions`` in a DPOTrainer's tokenized ``train_dataset``) as fixed
    :class:`PairBatch`es whose ``rows`` are the pairs' indices (``pair_index`` of each
    position; default the positions themselves), each sequence truncated as TRL trains it
    (:func:`truncate`)."""
    missing = [c for c in TRL_COLUMNS if c not in (getattr(dataset, "column_names", None) or [])]
    if missing:
        raise DataError(f"the trainer's train_dataset has no {missing} columns: attach the callback "
                        "to a DPOTrainer after it was built (it tokenizes the data set)")
    rows = dataset.select(positions)
    encoded = [(*truncate(p + c, len(p), max_length, truncation_mode),
                *truncate(p + r, len(p), max_length, truncation_mode))
               for p, c, r in zip(rows["prompt_ids"], rows["chosen_ids"], rows["rejected_ids"])]
    index = [pair_index[i] for i in positions] if pair_index is not None else list(positions)
    return [collate_pairs(encoded[s:s + batch_size], index[s:s + batch_size], pad_id)
            for s in range(0, len(index), batch_size)]


def prompt_batch(batches: Sequence[PairBatch], pad_id: int) -> tuple[AnswerBatch, Tensor, Tensor]:
    """(the probe's prompts as one :class:`AnswerBatch`, first chosen token, first rejected
    token), each (n,): the next-token distribution after each prompt is where the tokens
    that gained the most mass are read (:class:`~prefdyn.tracking.DisplacementMonitor`)."""
    prompts, first_chosen, first_rejected = [], [], []
    for b in batches:
        n = len(b)
        for i in range(2 * n):
            ids = b.input_ids[i][b.attention_mask[i].bool()]
            start = int(b.response_mask[i].nonzero()[0])
            (first_chosen if i < n else first_rejected).append(int(ids[start]))
            if i < n:
                prompts.append(ids[:start].tolist())
    input_ids, attention_mask, position_ids = left_padded(prompts, pad_id)
    rows = torch.cat([b.rows for b in batches])
    # yes_id / no_id / prefers_yes are unused: the caller gives the monitor its own pair ids.
    batch = AnswerBatch(input_ids, attention_mask, position_ids, 0, 0,
                        torch.ones(len(prompts), dtype=torch.bool), rows)
    return batch, torch.tensor(first_chosen), torch.tensor(first_rejected)


class MemoryStart:
    """W(0) of a full fine-tuning run kept in CPU memory (the
    :class:`~prefdyn.policies.lm.StartTensors` protocol): what a TRL run without a
    ``ref_model`` (``precompute_ref_log_probs``) leaves nowhere else."""

    def __init__(self, model: nn.Module):
        self._tensors = {name: p.detach().to("cpu", copy=True)
                         for name, p in model.named_parameters() if p.requires_grad}
        self.names = list(self._tensors)

    def tensor(self, name: str) -> Tensor:
        return self._tensors[name]

    def load_into(self, model: nn.Module) -> nn.Module:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if name in self._tensors:
                    p.copy_(self._tensors[name])
        return model

    def __iter__(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self._tensors.items())
