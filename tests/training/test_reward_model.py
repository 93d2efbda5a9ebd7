"""The Bradley-Terry reward model trained through the one loop, cached in the store."""

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.data.records import PreferencePair
from prefdyn.errors import PrefdynError
from prefdyn.policies.reward_model import HeadPolicy, feature_batches
from prefdyn.training.reward_model import (
    RewardModelSettings,
    _features,
    build_reward_model,
    fit_reward_model,
)
from tests._tiny import tiny_loaded

PROMPTS = ["I like cats.", "Kindness matters.", "The quick brown fox.", "Help me.",
           "Is it raining?", "Tell me a joke.", "Hi there.", "What now?"]


def _pairs(prompts):
    """A learnable preference: " Yes" over " No" whatever the prompt."""
    return [PreferencePair(p + "\n", " Yes", " No", f"t:{i}") for i, p in enumerate(prompts)]


@pytest.fixture
def data():
    return _pairs(PROMPTS[:6]), _pairs(PROMPTS[6:])


def test_head_only_model_learns_the_preference_and_is_served_from_the_store(data, tmp_path,
                                                                            monkeypatch):
    train_pairs, test_pairs = data
    loaded = tiny_loaded()
    before = {n: p.clone() for n, p in loaded.model.named_parameters()}
    settings = RewardModelSettings(steps=40, batch_size=4, lr=0.05)
    trained = fit_reward_model(loaded, train_pairs, test_pairs, settings, cache_dir=tmp_path)
    assert not trained.cached and trained.heldout == pytest.approx(
        {"accuracy": 1.0, "margin": trained.heldout["margin"], "pairs": 2})
    assert trained.heldout["margin"] > 0 and trained.train_fit["accuracy"] == 1.0
    losses = [r["loss"] for r in trained.history.records]
    assert len(losses) == 40 and losses[0] == pytest.approx(torch.log(torch.tensor(2.0)).item())
    assert losses[-1] < 0.1 * losses[0]
    for n, p in loaded.model.named_parameters():  # the reward model trained its own copy
        assert torch.equal(p, before[n]), n
    reward = trained.reward()
    r = reward([p.prompt for p in test_pairs] * 2, [" Yes", " Yes", " No", " No"])
    assert (r[:2] > r[2:]).all()
    files = list((tmp_path / "reward_model").glob("*.safetensors"))
    assert len(files) == 1

    calls = []
    monkeypatch.setattr(loop_module, "training_step", lambda *a, **k: calls.append(1))
    again = fit_reward_model(loaded, train_pairs, test_pairs, settings, cache_dir=tmp_path)
    assert again.cached and again.history is None and not calls
    assert again.heldout == trained.heldout
    torch.testing.assert_close(again.model.head.weight, trained.model.head.weight, rtol=0, atol=0)
    monkeypatch.undo()
    other = fit_reward_model(loaded, train_pairs, test_pairs,
                             RewardModelSettings(steps=2, batch_size=4, lr=0.05), cache_dir=tmp_path)
    assert not other.cached and len(list((tmp_path / "reward_model").glob("*.safetensors"))) == 2


def test_head_on_cached_features_scores_what_the_whole_model_scores(data, tmp_path):
    train_pairs, _ = data
    loaded = tiny_loaded()
    rm = build_reward_model(loaded)
    with torch.no_grad():
        rm.head.weight.normal_(generator=torch.Generator().manual_seed(0))
        rm.head.bias.fill_(0.3)
    chosen, rejected = _features(loaded, train_pairs, tmp_path, 4)
    scores = HeadPolicy(rm).logps(feature_batches(chosen, rejected, range(6), 6)[0])
    with torch.no_grad():
        want = rm.score_texts(loaded.tokenizer, [p.prompt + p.chosen for p in train_pairs])
    torch.testing.assert_close(scores.chosen, want, rtol=1e-4, atol=1e-4)


def test_last_blocks_train_with_the_head_and_nothing_else_moves(data, tmp_path):
    train_pairs, test_pairs = data
    loaded = tiny_loaded()
    settings = RewardModelSettings(train_layers=1, steps=3, batch_size=2, lr=0.01)
    start = build_reward_model(loaded, 1).state_dict()
    trained = fit_reward_model(loaded, train_pairs, test_pairs, settings, cache_dir=tmp_path)
    after = trained.model.state_dict()
    moved = {n for n in after if not torch.equal(after[n], start[n])}
    assert moved and all(n.startswith(("backbone.layers.1.", "backbone.norm.", "head.")) for n in moved)
    assert any(n.startswith("backbone.layers.1.") for n in moved)
    assert 0.0 <= trained.heldout["accuracy"] <= 1.0 and trained.heldout["pairs"] == 2
    again = fit_reward_model(loaded, train_pairs, test_pairs, settings, cache_dir=tmp_path)
    assert again.cached
    for n, t in again.model.state_dict().items():
        torch.testing.assert_close(t, after[n], rtol=0, atol=0)


def test_bad_settings_are_refused(data):
    loaded = tiny_loaded()
    with pytest.raises(PrefdynError, match="train_layers 5: the decoder has 2 blocks"):
        build_reward_model(loaded, 5)
    with pytest.raises(PrefdynError, match="no training pairs"):
        fit_reward_model(loaded, [], data[1])
    with pytest.raises(PrefdynError, match="steps must be >= 1"):
        RewardModelSettings(steps=0)
