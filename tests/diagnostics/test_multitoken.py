"""prefdyn's multi-token D and priority reduce to Im & Li's on single-token pairs."""

import torch

from prefdyn.data.records import PreferencePair
from prefdyn.diagnostics import behavior_stats, priority_gap_matrix, priority_levels
from prefdyn.diagnostics.multitoken import concept_gram, concept_priority, gram_factor
from prefdyn.embeddings import extract_embeddings
from tests._tiny import tiny_llama, tiny_tokenizer

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

