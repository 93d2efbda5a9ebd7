"""The single-token displacement table (Razin et al. 2024, Sec. 4) on a tiny model."""

import pytest
import torch

from prefdyn.errors import DataError, ModelError, PrefdynError
from prefdyn.experiments._displacement import load_synonyms, parse_synonyms
from prefdyn.experiments.displacement_tokens import (
    TokensConfig,
    overlap_at_k,
    parse_answer_pairs,
    ranked_tokens,
    run_token_table,
)
from prefdyn.training import TrainConfig
from tests._tiny import tiny_loaded


def test_overlap_at_k_on_a_hand_example():
    predicted, measured = [1, 2, 3, 4], [3, 9, 1, 8]
    assert overlap_at_k(predicted, measured, 1) == 0.0
    assert overlap_at_k(predicted, measured, 2) == 0.0
    assert overlap_at_k(predicted, measured, 3) == pytest.approx(2 / 3)  # {1,2,3} & {3,9,1}
    assert overlap_at_k(predicted, measured, 4) == 0.5
    with pytest.raises(ValueError):
        overlap_at_k(predicted, measured, 0)


def test_ranked_tokens_sorts_by_score_ties_by_id_and_excludes():
    scores = torch.tensor([0.1, 0.5, 0.5, -1.0, 0.7])
    assert ranked_tokens(scores, exclude=()) == [4, 1, 2, 0, 3]
    assert ranked_tokens(scores, exclude=(4, 1)) == [2, 0, 3]


def test_synonym_marking():
    syn = parse_synonyms({"synonyms": {"yes": ["sure", "yeah"], "no": ["never", "nope"]},
                          "opposites": [["yes", "no"]]}, "test")
    assert syn.mark(" Yes", "Yes", "No") == "benign"       # spaces and case do not matter
    assert syn.mark("yeah.", "Yes", "No") == "benign"
    assert syn.mark(" never", "Yes", "No") == "catastrophic"
    assert syn.mark(" cat", "Yes", "No") == "other"
    assert syn.mark("  ", "Yes", "No") == "other"
    # y- a synonym of y+: the opposite group is still catastrophic, the shared one benign
    assert syn.mark("Yes", "No", "Never") == "catastrophic"
    assert syn.mark(" nope", "No", "Never") == "benign"
    assert syn.mark(" yes", "Sure", "Yes") == "benign"
    assert syn.mark(" No", "Sure", "Yes") == "catastrophic"


def test_synonyms_without_opposites_use_the_dispreferred_meaning_and_merge_groups():
    syn = parse_synonyms({"good": ["fine"], "great": ["fine"], "bad": ["poor"]}, "test")
    assert syn.same("great", "good")  # merged through "fine"
    assert syn.mark("poor", "good", "bad") == "catastrophic"
    assert syn.mark("poor", "good", "fine") == "other"


def test_synonym_files(tmp_path):
    default = load_synonyms()
    assert default.mark("Sure", "Yes", "No") == "benign"
    assert default.mark("Never", "Yes", "No") == "catastrophic"
    bad = tmp_path / "s.yaml"
    bad.write_text("yes: [sure]\n")  # YAML 1.1 reads a bare yes as True
    with pytest.raises(DataError, match="quote"):
        load_synonyms(bad)
    good = tmp_path / "s.json"
    good.write_text('{"oui": ["yes"]}')
    assert load_synonyms(good).mark("Yes", "oui", "non") == "benign"
    with pytest.raises(DataError, match="not found"):
        load_synonyms(tmp_path / "missing.yaml")


def test_parse_answer_pairs():
    assert parse_answer_pairs("Yes:No, No:Never") == (("Yes", "No"), (" No", "Never"))
    with pytest.raises(PrefdynError):
        parse_answer_pairs("Yes-No")
    with pytest.raises(PrefdynError):
        TokensConfig(pairs=(("Yes", "Yes"),))


def test_multi_token_answer_is_an_error_before_training():
    with pytest.raises(ModelError, match="not a single token"):
        run_token_table(tiny_loaded(), TokensConfig(pairs=(("Yes", "No"), ("Absolutely not", "No"))),
                        TrainConfig(steps=1, optimizer="adamw"))


def test_token_table_on_a_tiny_model():
    loaded = tiny_loaded()
    start = {n: p.detach().clone() for n, p in loaded.model.named_parameters()}
    cfg = TokensConfig(pairs=(("Yes", "No"), ("No", "Yes")), top_k=5, loss_target=1e-9)
    res = run_token_table(loaded, cfg, TrainConfig(steps=8, lr=1e-3, optimizer="adamw"))
    rows = res.tables[0][1]
    assert [r["pair"] for r in rows] == ["'Yes' > 'No'", "'No' > 'Yes'"]
    for r in rows:
        assert r["steps"] == 8  # the loss target was never reached
        # DPO widened the margin of the one prompt
        assert r["pi(y+) after"] / r["pi(y-) after"] > r["pi(y+) before"] / r["pi(y-) before"]
        assert 0 <= r["overlap@5 (Δp)"] <= 1 and r["benign"] + r["catastrophic"] <= 5
    # both pairs start from the same model, and the caller's model is untouched
    assert rows[0]["pi(y+) before"] == pytest.approx(rows[1]["pi(y-) before"])
    assert all(torch.equal(p, start[n]) for n, p in loaded.model.named_parameters())
    W = loaded.model.get_output_embeddings().weight.detach().double()
    yes, no = (tok_id[0] for tok_id in loaded.tokenizer(["Yes", "No"], add_special_tokens=False)["input_ids"])
    for r, (p, m) in zip(rows, [(yes, no), (no, yes)]):  # condition 1 alone: falls iff <W+, W-> > ||W+||^2
        assert r["predicted π(y+) falls (condition 1 alone)"] == bool(W[p] @ W[m] > W[p] @ W[p])
        assert r["condition 1: <W_y+, W_y+ − W_y−>"] == pytest.approx(float(W[p] @ (W[p] - W[m])))
        # both conditions: falls iff condition 1 < the mass-weighted pull of every token
        pull = r["condition 2: Σ_z≠y± π(z)<W_z, W_y+ − W_y−>"]
        answers = (r["pi(y+) before"] * float(W[p] @ (W[p] - W[m]))
                   + r["pi(y-) before"] * float(W[m] @ (W[p] - W[m])))
        assert r["predicted π(y+) falls"] == (r["condition 1: <W_y+, W_y+ − W_y−>"] - pull - answers < 0)
    gainers = res.tables[1][1]
    assert len(gainers) == 10
    first = [g for g in gainers if g["pair"] == rows[0]["pair"]]
    assert [g["Δp"] for g in first] == sorted((g["Δp"] for g in first), reverse=True)
    assert not {g["token"] for g in first} & {"'Yes'", "'No'"}  # y+ and y- are excluded


def test_loss_target_stops_early():
    cfg = TokensConfig(pairs=(("Yes", "No"),), loss_target=100.0)
    res = run_token_table(tiny_loaded(), cfg, TrainConfig(steps=50, lr=1e-3, optimizer="adamw"))
    assert res.tables[0][1][0]["steps"] == 1


@pytest.mark.integration
def test_token_table_on_the_embedded_model():
    from prefdyn.data import TaskConfig, render_prompt
    from prefdyn.models import answer_token_ids, load_model

    loaded = load_model(None)
    tok = loaded.tokenizer
    assert len(answer_token_ids(tok, ["Yes", "No", "Never", "Sure"])) == 4  # the default pairs are valid
    cfg = TokensConfig(pairs=(("Yes", "No"),), top_k=5)
    res = run_token_table(loaded, cfg, TrainConfig(steps=3, lr=1e-5, optimizer="adamw"))
    row = res.tables[0][1][0]
    # pi(y+) and pi(y-) before training agree with a plain transformers forward pass
    ids = tok(render_prompt(cfg.statement, tok, TaskConfig()), add_special_tokens=False, return_tensors="pt")
    with torch.no_grad():
        probs = loaded.model(**ids).logits[0, -1].float().softmax(-1)
    yes, no = answer_token_ids(tok, ["Yes", "No"])
    assert row["pi(y+) before"] == pytest.approx(probs[yes].item(), rel=1e-3)
    assert row["pi(y-) before"] == pytest.approx(probs[no].item(), rel=1e-3)
    assert row["steps"] <= 3
    assert row["pi(y+) after"] / row["pi(y-) after"] > row["pi(y+) before"] / row["pi(y-) before"]
    assert not {g["id"] for g in res.tables[1][1]} & {yes, no}


def test_slides_catastrophic_row_is_classified_as_the_slides_do():
    # "Llama-3-8B | Sure | Yes | ... | Benign: sure, _Sure | Catastrophic: Maybe, No, Never"
    syn = load_synonyms()
    assert [syn.mark(t, "Sure", "Yes") for t in ("Maybe", " No", "Never")] == ["catastrophic"] * 3
    assert [syn.mark(t, "Sure", "Yes") for t in ("sure", " Sure")] == ["benign"] * 2
    # the same file as a user's: "maybe" listed as the opposite of the yes group
    custom = parse_synonyms({"synonyms": {"yes": ["sure"], "maybe": ["perhaps"]},
                             "opposites": [["yes", "maybe"]]}, "test")
    assert custom.mark("Perhaps", "Sure", "Yes") == "catastrophic"
