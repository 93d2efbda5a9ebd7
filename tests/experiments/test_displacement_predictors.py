"""Which score predicts displacement (Razin et al. 2024, Sec. 5), on a tiny model."""

import json

import pytest
import torch

from prefdyn.data import (
    PreferencePair,
    TaskConfig,
    build_behaviors,
    demo_data_dir,
    load_demo,
)
from prefdyn.diagnostics.ches import ches_scores
from prefdyn.errors import DataError, PrefdynError
from prefdyn.experiments._displacement import (
    displacement_stats,
    load_source,
    pair_scores,
    persona_pairs,
    subsample_pairs,
)
from prefdyn.experiments.displacement_predictors import (
    SourceConfig,
    run_predictors,
    score_correlations,
)
from prefdyn.policies.lm import LMPolicy, apply_lora
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded


def _behaviors(tok):
    return build_behaviors(load_demo(["kindness", "patience"]), tok, TaskConfig(n_per_behavior=6))


def test_spearman_signs_on_a_constructed_case():
    change = torch.tensor([0.5, 0.1, -0.2, -0.9, -1.5], dtype=torch.float64)
    scores = {"ches": torch.tensor([1.0, 2, 3, 4, 5]), "edit": torch.tensor([5.0, 4, 3, 2, 1]),
              "hidden": torch.tensor([1.0, 1, 1, 1, 1])}
    corr = score_correlations(scores, change)
    assert corr["ches"]["rho"] == pytest.approx(-1.0)  # more CHES, more displacement
    assert corr["edit"]["rho"] == pytest.approx(1.0)
    assert corr["hidden"]["rho"] != corr["hidden"]["rho"]  # constant score: NaN, not a number
    assert corr["ches"]["n"] == 5


def test_single_token_responses_give_ches_zero_and_persona_pairs_do_not():
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    behaviors = _behaviors(tok)
    single = [p for b in behaviors for p in b.to_pairs()]
    zero = ches_scores(loaded.model, tok, single)["ches"]
    assert torch.allclose(zero, torch.zeros_like(zero), atol=1e-9)  # S+ = S- = h(x)
    pairs = persona_pairs(behaviors, tok.eos_token)
    assert len(pairs) == len(single)
    for p, s in zip(pairs, single):
        assert p.prompt == s.prompt and p.chosen == s.chosen + "<|im_end|>"
        assert p.rejected == s.rejected + "<|im_end|>"
    ches = ches_scores(loaded.model, tok, pairs)["ches"]
    assert (ches.abs() > 1e-6).all()


def test_subsample_is_seeded_capped_and_names_bad_records():
    tok = tiny_loaded().tokenizer
    pairs = [PreferencePair(f"Q{i}: say it.", " Yes" * (1 + i), " No", f"f.jsonl:{i + 1}") for i in range(10)]
    lengths = [len(tok(p.prompt + p.chosen, add_special_tokens=False)["input_ids"]) for p in pairs]
    cap = sorted(lengths)[5]  # at least 6 pairs fit, the longest do not
    a = subsample_pairs(pairs, tok, 4, cap, seed=1)
    assert a == subsample_pairs(pairs, tok, 4, cap, seed=1) and len(a) == 4
    assert a != subsample_pairs(pairs, tok, 4, cap, seed=2)
    kept = subsample_pairs(pairs, tok, 100, cap, seed=1)
    assert {p.source for p in kept} == {p.source for p, n in zip(pairs, lengths) if n <= cap}
    bad = pairs[:2] + [PreferencePair("Q: Y", "es", " No", "f.jsonl:99")]
    with pytest.raises(DataError, match="f.jsonl:99"):  # the prompt is not a token prefix
        subsample_pairs(bad, tok, 3, None, seed=0)


def test_untrained_lora_policy_has_no_change():
    loaded = tiny_loaded()
    pairs = persona_pairs(_behaviors(loaded.tokenizer), loaded.tokenizer.eos_token)
    policy = LMPolicy(apply_lora(loaded.model, seed=0))  # B = 0: the policy is its reference
    scores = pair_scores(policy, pairs, loaded.tokenizer, batch_size=3)
    assert torch.allclose(scores.logps.chosen, scores.logps.ref_chosen) and len(scores) == len(pairs)
    stats = displacement_stats(scores)
    assert stats["chosen_logp_change"] == pytest.approx(0.0, abs=1e-9) and stats["chosen_fell"] == 0.0


def test_hh_source_skips_bad_records_and_says_what_was_chosen(tmp_path):
    path = tmp_path / "hh.jsonl"
    rows = [{"chosen": f"\n\nHuman: q{i}?\n\nAssistant: Yes{'!' * i}",
             "rejected": f"\n\nHuman: q{i}?\n\nAssistant: No"} for i in range(6)]
    rows.append({"chosen": "\n\nHuman: q?\n\nAssistant:", "rejected": "\n\nHuman: q?\n\nAssistant: No"})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pairs, what = load_source("hh", tiny_loaded().tokenizer, hh_path=str(path), persona_path=None,
                              behaviors=None, n=4, max_tokens=64, seed=0)
    assert len(pairs) == 4 and "4 of 6 pairs" in what and "seed 0" in what


def test_run_predictors_on_persona_pairs():
    src = SourceConfig(sources=("persona",), persona_path=str(demo_data_dir()),
                       behaviors=["kindness", "patience"], n=8, max_tokens=100)
    res = run_predictors(tiny_loaded(), src, TrainConfig(steps=3, lr=1e-3, optimizer="adamw", batch_size=4))
    rows = res.tables[0][1]
    assert [r["score"] for r in rows] == ["CHES", "length-normalized CHES", "edit similarity",
                                          "last-hidden inner product"]
    info = res.summary["sources"]["persona"]
    assert info["pairs"] == 8 and len(info["per_pair"]) == 8
    assert any(abs(p["chosen_logp_change"]) > 0 for p in info["per_pair"])  # training moved log-probs
    assert rows[2]["Spearman ρ"] != rows[2]["Spearman ρ"]  # edit similarity is constant here
    assert [f.name for f in res.figures] == ["scatter_persona"]


def test_percentile_subset_takes_consecutive_pairs_in_score_order():
    from prefdyn.experiments.displacement_predictors import percentile_subset

    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0])  # ascending order: 5, 1, 3, 4, 2, 0
    assert percentile_subset(scores, 0, 2) == [5, 1]  # the two lowest
    assert percentile_subset(scores, 100, 2) == [2, 0]  # the two highest
    assert percentile_subset(scores, 50, 2) == [3, 4]  # start round(0.5 * 4) = 2


def test_percentile_subsets_train_each_subset_alone():
    from prefdyn.experiments.displacement_predictors import subset_drop

    src = SourceConfig(sources=("persona",), persona_path=str(demo_data_dir()), behaviors=["kindness", "patience"],
                       n=8, max_tokens=100, percentiles=(0, 100), subset_size=4, subset_steps=2)
    res = run_predictors(tiny_loaded(), src, TrainConfig(steps=2, lr=1e-3, optimizer="adamw", batch_size=4))
    subsets = res.summary["sources"]["persona"]["percentile_subsets"]
    assert set(subsets) == {"ches", "edit", "hidden"} and all(set(v) == {"0", "100"} for v in subsets.values())
    ches = subsets["ches"]
    assert ches["0"]["score_mean"] <= ches["100"]["score_mean"]  # the subsets follow the score
    assert subset_drop(ches) == ches["0"]["chosen_logp_change"] - ches["100"]["chosen_logp_change"]
    assert "percentile_subsets_persona" in [f.name for f in res.figures]
    with pytest.raises(PrefdynError, match="subset_size"):
        SourceConfig(n=4, percentiles=(0,), subset_size=0)
