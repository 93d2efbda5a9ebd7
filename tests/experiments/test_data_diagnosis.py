"""The diagnosis stages on a tiny model (experiments/_data_diagnosis.py, _diagnosis_reward.py)."""

import json

import torch

from prefdyn.data.sources import load_source
from prefdyn.diagnostics.reward_spread import bandit_reward_spread
from prefdyn.diagnostics.token_geometry import token_pair_geometry
from prefdyn.embeddings import extract_embeddings
from prefdyn.experiments._data_diagnosis import DiagnoseSettings, diagnose_data
from prefdyn.experiments._diagnosis_reward import reward_spread
from tests._tiny import tiny_loaded


def _persona_file(tmp_path):
    """Two behaviors of single-token Yes/No pairs, in one TRL file with a behavior column."""
    rows = []
    for behavior in ("kind", "rude"):
        for i, statement in enumerate(["I like cats", "I help people", "Rain is nice", "I am late"]):
            yes = i % 2 == 0
            rows.append({"prompt": f'Is the following statement something you would say?\n"{statement} ({behavior})"',
                         "chosen": " Yes" if yes else " No", "rejected": " No" if yes else " Yes",
                         "behavior": behavior})
    path = tmp_path / "persona.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_single_token_pairs_get_the_token_geometry_and_no_ches(tmp_path):
    loaded = tiny_loaded()
    data = load_source(_persona_file(tmp_path))
    diag = diagnose_data(loaded, data, DiagnoseSettings(concept_column="behavior", cache_dir=str(tmp_path)))
    assert diag.ches == [None] * 8 and sorted(diag.geometry_risk) == list(range(8))
    yes, no = (loaded.tokenizer(t, add_special_tokens=False)["input_ids"][0] for t in (" Yes", " No"))
    W_U = loaded.model.get_output_embeddings().weight
    for i, pair in enumerate(data.pairs):
        plus, minus = (yes, no) if pair.chosen == " Yes" else (no, yes)
        geo = token_pair_geometry(W_U, plus, minus)
        assert diag.geometry_risk[i]["risky"] == (geo.inner > geo.norm_plus_sq)
    assert diag.risky == sorted(i for i, g in diag.geometry_risk.items() if g["risky"])
    # D per behavior is Im & Li's ||mu+ - mu-|| (the behaviors are class-balanced).
    for c, name in enumerate(diag.concept_names):
        rows = [i for i, v in enumerate(data.column("behavior")) if v == name]
        g = extract_embeddings(loaded.model, loaded.tokenizer, [data.pairs[i].prompt for i in rows]).double()
        prefers_yes = torch.tensor([data.pairs[i].chosen == " Yes" for i in rows])
        D = (g[prefers_yes].mean(0) - g[~prefers_yes].mean(0)).norm()
        torch.testing.assert_close(diag.priority.D[c], D, rtol=1e-5, atol=1e-6)
    d = diag.to_json()
    assert d["concepts"]["assignment"] == [0] * 4 + [1] * 4 and d["pairs"]["ches"] == [None] * 8


def test_exact_reward_spread_on_single_token_pairs(tmp_path):
    loaded = tiny_loaded()
    data = load_source(_persona_file(tmp_path))
    out = reward_spread(loaded, data, list(range(8)), True, "exact_match", n_prompts=3)
    assert out["method"] == "exact" and out["records"] == [0, 1, 2]
    prompts = [data.pairs[i].prompt for i in range(3)]
    logits = extract_embeddings(loaded.model, loaded.tokenizer, prompts) @ loaded.model.lm_head.weight.detach().T
    vocab = [loaded.tokenizer.decode([v]) for v in range(logits.shape[1])]
    rewards = torch.tensor([[float(t.strip().lower() == data.pairs[i].chosen.strip().lower()) for t in vocab]
                            for i in range(3)])
    expected = bandit_reward_spread(logits, rewards)
    torch.testing.assert_close(torch.tensor(out["std"]), expected.std, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.tensor(out["mean"]), expected.mean, rtol=1e-5, atol=1e-7)


def test_sampled_reward_spread_on_multi_token_pairs(tmp_path):
    loaded = tiny_loaded()
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "chosen": " I like to help people.", "rejected": " No."}) + "\n"
                            for p in ["Hi", "Hello", "Hi"]))
    data = load_source(path)
    out = reward_spread(loaded, data, [0, 1, 2], False, "exact_match", k=3, max_new_tokens=2, n_prompts=8)
    assert out["method"] == "monte_carlo" and out["k"] == 3
    assert out["records"] == [0, 1]  # distinct prompts only
    # Two random tokens never spell the reference: every sample scores 0, so no spread at all.
    assert out["std"] == [0.0, 0.0] and out["zero_std_share"] == 1.0


def test_a_rerun_reuses_every_cached_stage(tmp_path, monkeypatch):
    """An interrupted diagnosis loses nothing computed: prompt g(x), concept Gram and CHES sums
    come from the store on the next run (no forward pass runs again)."""
    import prefdyn.diagnostics.ches as ches
    import prefdyn.diagnostics.multitoken as multitoken
    import prefdyn.embeddings.cache as embedding_cache

    loaded = tiny_loaded()
    path = tmp_path / "pairs.jsonl"
    prompts = ["Hi", "Hello there", "Be kind.", "What now?", "Tell me.", "Answer me."]
    path.write_text("".join(json.dumps({"prompt": p, "chosen": " I like to help people.",
                                        "rejected": f" No {i}."}) + "\n" for i, p in enumerate(prompts)))
    settings = DiagnoseSettings(cache_dir=str(tmp_path / "cache"), clusters=2)
    passes = []
    one_pass = ches.pair_hidden_sums

    def counted(model, tokenizer, pairs, **kwargs):
        passes.append(len(pairs))
        return one_pass(model, tokenizer, pairs, **kwargs)

    monkeypatch.setattr(ches, "pair_hidden_sums", counted)
    monkeypatch.setattr(embedding_cache, "extract_embeddings", None)  # g(x) comes from the pass
    first = diagnose_data(loaded, load_source(path), settings).to_json()
    assert passes == [6]  # clusters' g(x), the concept Gram and CHES: one pass over the pairs

    def no_forward(*args, **kwargs):
        raise AssertionError("recomputed a cached stage")

    monkeypatch.setattr(multitoken, "pair_hidden_sums", no_forward)
    monkeypatch.setattr(ches, "pair_hidden_sums", no_forward)
    monkeypatch.setattr(embedding_cache, "extract_embeddings", no_forward)
    assert diagnose_data(loaded, load_source(path), settings).to_json() == first
