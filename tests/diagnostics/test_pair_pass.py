"""One pass over the pairs gives the CHES sums, the prompts' g(x) and the concepts' Gram, each
equal to its own computation, and runs only when a store lacks one of them."""

import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics.ches import cached_pair_hidden_sums, pair_hidden_sums
from prefdyn.diagnostics.multitoken import cached_concept_gram, concept_gram
from prefdyn.diagnostics.pair_pass import PairPass
from prefdyn.embeddings import cached_embeddings, extract_embeddings
from tests._tiny import tiny_loaded

PAIRS = [PreferencePair("Hello", " I like to help people.", " No.", "m:1"),
         PreferencePair("Hi there", " Yes.", " The quick brown fox", "m:2"),
         PreferencePair("Tell me a story", " Once upon a time", " No", "m:3"),
         PreferencePair("Hello", " Sure, here it is.", " I will not.", "m:4")]


def test_one_pass_equals_each_computation_alone(tmp_path):
    loaded = tiny_loaded()
    model, tok = loaded.model, loaded.tokenizer
    run = PairPass(loaded, PAIRS, cache_dir=str(tmp_path), batch_size=4)
    g = run.prompt_states()
    torch.testing.assert_close(g, extract_embeddings(model, tok, [p.prompt for p in PAIRS]),
                               rtol=1e-5, atol=1e-5)
    for got, want in zip(run.ches_sums([0, 1, 2, 3]), pair_hidden_sums(model, tok, PAIRS, batch_size=4)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    concepts = torch.tensor([0, 1, -1, 1])  # pair 2 outside every concept
    gram = run.gram(concepts, 2)
    alone = concept_gram(model, tok, [PAIRS[i] for i in (0, 1, 3)], torch.tensor([0, 1, 1]), 2,
                         batch_size=1)
    torch.testing.assert_close(gram, alone, rtol=1e-5, atol=1e-6)
    # the padded path (no shared prompt) reads the same hidden states
    padded = pair_hidden_sums(model, tok, PAIRS, share_prompt=False)
    torch.testing.assert_close(run.ches_sums([0, 1, 2, 3])[0], padded[0], rtol=1e-5, atol=1e-5)
    assert run.passes == 1


def test_the_pass_runs_only_when_a_store_lacks_something(tmp_path):
    loaded = tiny_loaded()
    cache = str(tmp_path)
    concepts = torch.tensor([0, 1, 0, 1])
    first = PairPass(loaded, PAIRS, cache_dir=cache)
    g, sums, gram = first.prompt_states(), first.ches_sums([1, 3]), first.gram(concepts, 2)
    assert first.passes == 1
    # each went into the store the stand-alone functions read
    again = PairPass(loaded, PAIRS, cache_dir=cache)
    assert torch.equal(again.prompt_states(), g)
    assert torch.equal(cached_embeddings(loaded, [p.prompt for p in PAIRS], cache_dir=cache), g)
    for a, b in zip(cached_pair_hidden_sums(loaded, [PAIRS[1], PAIRS[3]], cache_dir=cache), sums):
        assert torch.equal(a, b)
    assert torch.equal(cached_concept_gram(loaded, PAIRS, concepts, 2, cache_dir=cache), gram)
    assert torch.equal(again.gram(concepts, 2), gram) and again.passes == 0
    # another concept split is not stored: one pass, whose other outputs are then reused
    other = torch.tensor([1, 1, 0, 0])
    g2 = again.gram(other, 2)
    assert again.passes == 1 and again.ches_sums([0, 2]) is not None and again.passes == 1
    torch.testing.assert_close(g2, concept_gram(loaded.model, loaded.tokenizer, PAIRS, other, 2))
