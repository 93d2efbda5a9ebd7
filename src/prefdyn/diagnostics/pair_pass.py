"""One pass of the model over preference pairs gives what a diagnosis reads from it.

In the packed CHES row of a pair (:mod:`prefdyn.diagnostics._ches_pack`) the hidden
state at the last prompt position P-1 is the prompt's g(x) (the lm_head input at its
last token, :mod:`prefdyn.embeddings`) and also the first state both CHES sums read;
the states after it that the sums read are exactly the label parts of the concepts'
Gram (:mod:`prefdyn.diagnostics.multitoken`). So one forward pass over the pairs gives

* the CHES hidden sums of every pair (:func:`~prefdyn.diagnostics.ches.pair_hidden_sums`),
* each pair's prompt g(x), the input of the prompt clusters,
* each pair's label part, from which the Gram of any concepts is built afterwards
  (the concepts may come from clustering those very g(x)).

:class:`PairPass` serves each of them from its own store (``embeddings``, ``ches``,
``concept_gram``: the keys of :func:`~prefdyn.embeddings.cached_embeddings`,
:func:`~prefdyn.diagnostics.ches.cached_pair_hidden_sums` and
:func:`~prefdyn.diagnostics.multitoken.cached_concept_gram`) when it is there, runs the
pass at most once when one is missing, and stores what it computed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics import ches, multitoken
from prefdyn.embeddings.cache import store_embeddings, stored_embeddings


class PairPass:
    """The pass over ``pairs`` (lazy; module docstring). Pair indices are positions in ``pairs``."""

    def __init__(self, loaded, pairs: Sequence[PreferencePair], *,
                 cache_dir: str | os.PathLike | None = None, batch_size: int = 8,
                 progress: bool = False):
        self.loaded, self.pairs = loaded, list(pairs)
        self.cache_dir, self.batch_size, self.progress = cache_dir, batch_size, progress
        self.passes = 0  # forward passes run (0 when every artifact came from the stores)
        self._out: tuple[ches.HiddenSums, Tensor, multitoken.LabelParts] | None = None

    def _run(self) -> tuple[ches.HiddenSums, Tensor, multitoken.LabelParts]:
        if self._out is None:
            model, tok = self.loaded.model, self.loaded.tokenizer
            parts = multitoken.LabelParts(tok, self.pairs,
                                          getattr(model.config, "max_position_embeddings", None))
            states = torch.zeros(len(self.pairs), model.get_output_embeddings().weight.shape[1])

            def read(j: int, hidden: Tensor) -> None:
                if j % 2 == 0:  # position P-1 comes first: the prompt's g(x)
                    states[j // 2] = hidden[0].float()
                parts(j, hidden)

            sums = ches.pair_hidden_sums(model, tok, self.pairs, batch_size=self.batch_size,
                                         progress=self.progress, reader=read)
            self.passes += 1
            self._out = (sums, states, parts)
        return self._out

    def prompt_states(self) -> Tensor:
        """(n, d) float32: g(x) of each pair's prompt."""
        prompts = [p.prompt for p in self.pairs]
        found = stored_embeddings(self.loaded, prompts, cache_dir=self.cache_dir)
        if found is not None:
            return found
        states = self._run()[1]
        store_embeddings(self.loaded, prompts, states, cache_dir=self.cache_dir)
        return states

    def ches_sums(self, rows: Sequence[int]) -> ches.HiddenSums:
        """The CHES hidden sums (:data:`~prefdyn.diagnostics.ches.HiddenSums`) of the pairs ``rows``."""
        rows = list(rows)
        subset = [self.pairs[r] for r in rows]
        spec = ches.sums_spec(len(rows), self.loaded.model.get_output_embeddings().weight.shape[1])
        key = ches.ches_cache_key(self.loaded, subset)
        found = ches.STORE.load(key, spec, cache_dir=self.cache_dir)
        if found is not None:
            return tuple(found[name] for name in spec)  # type: ignore[return-value]
        index = torch.tensor(rows, dtype=torch.long)
        sums = tuple(t[index].contiguous() for t in self._run()[0])
        ches.STORE.save(key, dict(zip(spec, sums)), cache_dir=self.cache_dir,
                        info={"model": self.loaded.name})
        return sums  # type: ignore[return-value]

    def gram(self, concepts: Tensor, k: int) -> Tensor:
        """The concepts' Gram (:func:`~prefdyn.diagnostics.multitoken.concept_gram`);
        ``concepts`` (n,) in ``0..k-1``, -1 for a pair outside every concept."""
        members = [i for i in range(len(self.pairs)) if int(concepts[i]) >= 0]
        key = multitoken.concept_gram_key(self.loaded, [self.pairs[i] for i in members],
                                          concepts[members], k)
        found = multitoken.STORE.load(key, multitoken.gram_spec(k), cache_dir=self.cache_dir)
        if found is not None:
            return found["gram"]
        gram = self._run()[2].gram(concepts, k)
        multitoken.STORE.save(key, {"gram": gram}, cache_dir=self.cache_dir,
                              info={"model": self.loaded.name})
        return gram
