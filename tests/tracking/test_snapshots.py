import math

import pytest
import torch

from prefdyn.embeddings import extract_embeddings
from prefdyn.policies.lm import LMPolicy
from prefdyn.tracking.history import History
from prefdyn.tracking.snapshots import (
    LAST,
    EmbeddingSnapshots,
    Probe,
    class_spread,
    probe_embeddings,
    snapshot_stats,
)
from tests._tiny import chat_prompts, tiny_loaded


def test_class_spread_by_hand():
    emb = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    yes = torch.tensor([True, True, False, False])
    assert class_spread(emb, yes) == pytest.approx(1.0)
    stats = snapshot_stats(emb, yes)
    # mu+ = (1, 0), mu- = (0, 2)
    assert stats["D"] == pytest.approx(math.sqrt(5))
    assert stats["spread_ratio"] == pytest.approx(1 / math.sqrt(5))


def test_snapshot_stats_nan_with_a_single_row_class():
    stats = snapshot_stats(torch.randn(3, 4), torch.tensor([True, False, False]))
    assert all(math.isnan(v) for v in stats.values())


STATEMENTS = ["I like cats", "Kindness", "The quick brown fox", "I enjoy pain",
              "Help", "No way", "Yes sir", "Cats and dogs"]


def _probe(tok):
    texts = chat_prompts(tok, STATEMENTS)
    ids = tok(texts, add_special_tokens=False)["input_ids"]
    return texts, Probe(ids, torch.tensor([True, False] * 4), torch.tensor([0] * 4 + [1] * 4),
                        ["a", "b"])


def test_snapshot_is_the_extracted_embedding_and_tracks_the_model():
    loaded = tiny_loaded()
    tok, model = loaded.tokenizer, loaded.model
    texts, probe = _probe(tok)
    history = History()
    snaps = EmbeddingSnapshots(probe, [0, LAST], history=history, pad_id=tok.pad_token_id,
                               batch_size=3)
    policy = LMPolicy(model, reference_model=tiny_loaded().model)

    class State:
        step, error = 0, None

    model.train()
    snaps.on_train_start(State, policy)
    assert model.training  # restored after the eval-mode snapshot
    expected = extract_embeddings(model, tok, texts, reuse_prefix=False)
    torch.testing.assert_close(snaps.snapshots[0], expected, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        for p in model.model.layers[0].parameters():
            p.add_(0.05)
    State.step = 5
    snaps.on_step_end(State, policy, None)  # 5 is not a snapshot step
    assert list(snaps.snapshots) == [0]
    snaps.on_train_end(State, policy)  # LAST
    assert list(snaps.snapshots) == [0, 5]
    assert not torch.allclose(snaps.snapshots[0], snaps.snapshots[5])
    stats = snaps.stats(5)
    assert set(stats) == {"a", "b"} and stats["a"]["n"] == 4
    assert snaps.group_rows("b").tolist() == [4, 5, 6, 7]
    _, D = history.curves("D", split="snapshot", by="group")
    assert D["a"].shape == (2,)


@pytest.mark.integration
def test_real_model_snapshot_matches_extraction_and_lm_head():
    from prefdyn.models import answer_token_ids, load_model

    loaded = load_model(None)
    tok = loaded.tokenizer
    texts, probe = _probe(tok)
    policy = LMPolicy(loaded.model)
    emb = probe_embeddings(policy, probe, pad_id=tok.pad_token_id, batch_size=4)
    torch.testing.assert_close(emb, extract_embeddings(loaded.model, tok, texts), rtol=1e-3, atol=1e-3)
    # lm_head(g) is the model's own next-token distribution at the last prompt token
    yes, _ = answer_token_ids(tok, ("Yes", "No"))
    with torch.no_grad():
        ids = tok(texts[0], add_special_tokens=False, return_tensors="pt")["input_ids"]
        ref = torch.log_softmax(loaded.model(ids).logits[0, -1].float(), -1)[yes]
        mine = torch.log_softmax(loaded.model.lm_head(emb[0]), -1)[yes]
    assert mine.item() == pytest.approx(ref.item(), abs=1e-3)
