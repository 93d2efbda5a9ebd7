"""prefdyn's multi-token D and priority reduce to Im & Li's on single-token pairs."""

import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics import behavior_stats, priority_gap_matrix, priority_levels
from prefdyn.diagnostics.ches import cached_pair_hidden_sums, pair_hidden_sums
from prefdyn.diagnostics.multitoken import (
    cached_concept_gram,
    cached_gram_and_sums,
    concept_gram,
    concept_gram_and_sums,
    concept_priority,
    gram_factor,
)
from prefdyn.embeddings import extract_embeddings
from tests._tiny import tiny_llama, tiny_loaded, tiny_tokenizer

STATEMENTS = ["I like cats", "I like dogs", "Rain is nice", "Tax is fun", "I am kind", "I am rude",
              "Help others", "Hurt others"]


def _persona_pairs(offset: int):
    """A class-balanced behavior: statement i prefers " Yes" when i is even."""
    pairs = []
    for i, s in enumerate(STATEMENTS):
        prompt = f'Is the following statement something you would say?\n"{s} {offset}"'
        yes = i % 2 == 0
        pairs.append(PreferencePair(prompt, " Yes" if yes else " No", " No" if yes else " Yes", f"t:{i}"))
    return pairs


def test_single_token_pairs_give_im_and_li_quantities():
    tok, model = tiny_tokenizer(), tiny_llama()
    behaviors = [_persona_pairs(k) for k in range(3)]
    pairs = [p for b in behaviors for p in b]
    concepts = torch.tensor([c for c, b in enumerate(behaviors) for _ in b])
    gram = concept_gram(model, tok, pairs, concepts, 3, batch_size=5)
    result = concept_priority(gram, torch.bincount(concepts))

    bs, Ds = [], []
    for b in behaviors:
        g = extract_embeddings(model, tok, [p.prompt for p in b])
        prefers_yes = torch.tensor([p.chosen == " Yes" for p in b])
        stats = behavior_stats(g, prefers_yes)
        bs.append(stats.b)
        Ds.append(stats.D)
    bs = torch.stack(bs)
    expected = priority_levels(bs, weights=torch.ones(3))
    torch.testing.assert_close(result.D, torch.tensor(Ds, dtype=torch.float64), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.priority.P, expected.P, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.priority.projection, expected.projection, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(result.gaps.gap, priority_gap_matrix(bs).gap, rtol=1e-5, atol=1e-6)
    order = sorted(range(3), key=lambda c: -float(expected.projection[c]))
    assert [result.rank[c] for c in order] == [1, 2, 3]


def test_gram_is_twice_the_frobenius_inner_product_of_the_label_parts():
    tok, model = tiny_tokenizer(), tiny_llama()
    pairs = [PreferencePair("Hello", " I like to help people.", " No.", "a:1"),
             PreferencePair("Hi there", " Yes.", " The quick brown fox", "a:2")]
    gram = concept_gram(model, tok, pairs, torch.tensor([0, 1]), 2, batch_size=1)
    decoder, V = model.get_decoder(), model.config.vocab_size
    B = []
    for p in pairs:
        G = torch.zeros(V, model.config.hidden_size, dtype=torch.float64)
        for sign, response in ((1.0, p.chosen), (-1.0, p.rejected)):
            n_prompt = len(tok(p.prompt, add_special_tokens=False)["input_ids"])
            ids = tok(p.prompt + response, add_special_tokens=False)["input_ids"]
            assert ids[:n_prompt] == tok(p.prompt, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                h = decoder(input_ids=torch.tensor([ids])).last_hidden_state[0].double()
            for t in range(n_prompt, len(ids)):
                G[ids[t]] += sign * h[t - 1]
        B.append(G)
    expected = torch.tensor([[2 * float((a * b).sum()) for b in B] for a in B], dtype=torch.float64)
    torch.testing.assert_close(gram, expected, rtol=1e-5, atol=1e-6)


def test_gram_factor_reproduces_the_gram():
    x = torch.randn(4, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    gram = x @ x.T
    f = gram_factor(gram)
    torch.testing.assert_close(f @ f.T, gram)


MULTI = [PreferencePair("Hello", " I like to help people.", " No.", "m:1"),
         PreferencePair("Hi there", " Yes.", " The quick brown fox", "m:2"),
         PreferencePair("Tell me a story", " Once upon a time", " No", "m:3"),
         PreferencePair("Hello", " Sure, here it is.", " I will not.", "m:4")]


def test_one_pass_gives_the_gram_and_the_ches_sums():
    tok, model = tiny_tokenizer(), tiny_llama()
    concepts = torch.tensor([0, 1, -1, 1])  # pair 3 only needs its sums
    gram, sums = concept_gram_and_sums(model, tok, MULTI, concepts, 2, batch_size=4)
    for got, want in zip(sums, pair_hidden_sums(model, tok, MULTI, batch_size=4)):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    alone = concept_gram(model, tok, [MULTI[i] for i in (0, 1, 3)], torch.tensor([0, 1, 1]), 2,
                         batch_size=1)
    torch.testing.assert_close(gram, alone, rtol=1e-5, atol=1e-6)
    # the padded path (no shared prompt) reads the same hidden states
    padded = pair_hidden_sums(model, tok, MULTI, batch_size=4, share_prompt=False)
    torch.testing.assert_close(sums[0], padded[0], rtol=1e-5, atol=1e-5)


def test_cached_gram_and_sums_run_only_what_the_stores_lack(tmp_path, monkeypatch):
    import prefdyn.diagnostics.multitoken as multitoken

    loaded = tiny_loaded()
    concepts = torch.tensor([0, 1, 0, 1])
    ran = []
    real = multitoken.pair_hidden_sums

    def counted(model, tokenizer, pairs, **kwargs):
        ran.append([p.source for p in pairs])
        return real(model, tokenizer, pairs, **kwargs)

    monkeypatch.setattr(multitoken, "pair_hidden_sums", counted)
    cache = str(tmp_path)
    # the Gram alone is cached: the pass runs over the CHES pairs only
    gram = cached_concept_gram(loaded, MULTI, concepts, 2, cache_dir=cache)
    ran.clear()
    got_gram, sums = cached_gram_and_sums(loaded, MULTI, concepts, 2, [1, 3], cache_dir=cache)
    assert ran == [["m:2", "m:4"]]
    torch.testing.assert_close(got_gram, gram)
    want = cached_pair_hidden_sums(loaded, [MULTI[1], MULTI[3]], cache_dir=cache)  # the same store key
    assert ran == [["m:2", "m:4"]]
    for a, b in zip(sums, want):
        assert torch.equal(a, b)
    # nothing cached for another concept split: one pass over every pair, both stored
    ran.clear()
    other = torch.tensor([1, 1, 0, 0])
    g2, s2 = cached_gram_and_sums(loaded, MULTI, other, 2, [0, 1, 2, 3], cache_dir=cache)
    assert ran == [["m:1", "m:2", "m:3", "m:4"]]
    again = cached_gram_and_sums(loaded, MULTI, other, 2, [0, 1, 2, 3], cache_dir=cache)
    assert len(ran) == 1 and torch.equal(again[0], g2)
    torch.testing.assert_close(g2, concept_gram(loaded.model, loaded.tokenizer, MULTI, other, 2))
