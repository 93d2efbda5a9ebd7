import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from prefdyn.data import PreferencePair, load_pairs
from prefdyn.errors import DataError, PrefdynError
from prefdyn.experiments.configure import resolve_config
from prefdyn.experiments.registry import get_spec
from prefdyn.experiments.hh_rlhf import (
    HHPreset,
    fallback_stats,
    flip_pairs,
    run_hh_rlhf,
    select_pairs,
)
from prefdyn.losses import get_loss
from prefdyn.policies.lm import LMPolicy, apply_lora
from prefdyn.tracking.history import History
from prefdyn.tracking.lm_metrics import LMEvalTracker
from prefdyn.training.lm_data import fixed_pair_batches
from tests._tiny import tiny_loaded, tiny_tokenizer

HH = Path(__file__).resolve().parents[2] / "../shared/data/hh-rlhf/harmless-base-test.jsonl.gz"

PROMPTS = ["\n\nHuman: Is the following statement something you would say?\n\nAssistant:",
           "\n\nHuman: I like to help people.\n\nAssistant:",
           "\n\nHuman: The quick brown fox jumps over the lazy dog.\n\nAssistant:",
           "\n\nHuman: It is important to treat other people with kindness.\n\nAssistant:"]
GOOD = [" Yes.", " It is important to treat other people with kindness and respect.", " I like to help."]
BAD = [" No.", " I enjoy causing pain to others.", " The lazy dog."]


def _pairs(n: int = 12) -> list[PreferencePair]:
    return [PreferencePair(PROMPTS[i % 4], GOOD[i % 3], BAD[(i + 1) % 3], f"toy:{i + 1}")
            for i in range(n)]


TINY = HHPreset(n_train=8, n_test=4, max_tokens=None, batch_size=4, align_steps=6, flip_steps=4,
                eval_every=2, lr=5e-2, beta=0.5, window=4)


def test_flip_pairs_swaps_responses_only():
    pairs = _pairs(3)
    flipped = flip_pairs(pairs)
    for p, f in zip(pairs, flipped):
        assert (f.prompt, f.chosen, f.rejected, f.source) == (p.prompt, p.rejected, p.chosen, p.source)


def test_select_pairs_is_seeded_disjoint_and_respects_the_cap():
    tok = tiny_tokenizer()
    pairs = _pairs(12) + [PreferencePair(PROMPTS[0], " Yes." * 60, " No.", "toy:long")]
    train, test = select_pairs(pairs, tok, 6, 4, 60, seed=3)
    again, _ = select_pairs(pairs, tok, 6, 4, 60, seed=3)
    other, _ = select_pairs(pairs, tok, 6, 4, 60, seed=4)
    assert train == again and train != other
    assert not {p.source for p in train} & {p.source for p in test}
    assert "toy:long" not in {p.source for p in train + test}  # over the 60-token cap
    with pytest.raises(DataError, match="only 12 of 13 pairs fit 60 tokens"):
        select_pairs(pairs, tok, 10, 4, 60, seed=0)


def test_presets_validate_and_override():
    spec = get_spec("lm hh-rlhf")
    assert resolve_config(spec, preset="quick", flags={"train": {"lr": 1e-3}}).train.lr == 1e-3
    paper = resolve_config(spec, preset="paper")
    assert paper.experiment.window == 100 and paper.train.beta == 0.01 and paper.experiment.mode == "lora"
    with pytest.raises(PrefdynError, match="unknown preset"):
        resolve_config(spec, preset="fast")
    with pytest.raises(PrefdynError, match="batch_size"):
        HHPreset(batch_size=0)


def test_fallback_stats_by_hand():
    steps = np.array([0, 5, 10, 15])
    base = np.array([1.0, 0.5, 0.0, -0.5])
    aligned = np.array([3.0, 1.5, 1.1, 0.0])
    st = fallback_stats(steps, base, aligned, window=10)
    # gain 2; 90% undone at <= 3 - 1.8 = 1.2: first at step 10.
    assert st["gain"] == 2.0 and st["fallback_step"] == 10.0 and st["fell_back_within_window"]
    assert st["drop_from_base"] == 1.0 and st["drop_from_aligned"] == pytest.approx(1.9)
    assert st["speedup"] == pytest.approx(1.9) and st["aligned_minus_base_at_window"] == pytest.approx(0.1)
    never = fallback_stats(steps, base, np.array([3.0, 2.9, 2.8, 2.7]), window=10)
    assert never["fallback_step"] == float("inf") and not never["fell_back_within_window"]
    assert np.isnan(fallback_stats(steps, base, base - 1, window=10)["fallback_step"])  # no gain


def test_probe_logp_diff_matches_direct_log_probs_and_its_schedule():
    """The HH probe is LMEvalTracker: its logp_diff and policy_acc are the policy's own
    chosen-minus-rejected log-probs, recorded at 0, every ``every`` steps and the end."""
    loaded = tiny_loaded()
    pairs = _pairs(5)
    batches = fixed_pair_batches(pairs, loaded.tokenizer, 2)
    assert [len(b) for b in batches] == [2, 2, 1]
    policy = LMPolicy(apply_lora(loaded.model, seed=0))  # pi_ref: the adapters disabled
    history = History()
    probe = LMEvalTracker(get_loss("dpo", beta=0.1), {"test": batches, "train_probe": batches[:1]},
                          history=history, every=3, name="p")

    class S:  # the loop's state, as the probe sees it
        step, max_steps, error = 0, 7, None
    probe.on_train_start(S, policy)
    with torch.no_grad():
        policy.model.eval()
        c, r = zip(*(policy.pair(b) for b in batches))
    diff = torch.cat(c) - torch.cat(r)
    got = history.records[0]
    assert got["split"] == "test"
    assert got["logp_diff"] == pytest.approx(diff.mean().item(), abs=1e-5)
    assert got["policy_acc"] == pytest.approx((diff > 0).float().mean().item())
    for S.step in range(1, 8):
        probe.on_step_end(S, policy, None)
    probe.on_train_end(S, policy)
    assert [(r["step"], r["split"]) for r in history.records] == [
        (s, split) for s in (0, 3, 6, 7) for split in ("test", "train_probe")]


def test_run_hh_rlhf_on_a_tiny_model():
    loaded = tiny_loaded()
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    res = run_hh_rlhf(loaded, _pairs(12), TINY, seed=0)
    s = res.summary
    # The caller's model is untouched: every run trains a copy.
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())
    # Alignment raised the log-prob difference on the training pairs it was trained on.
    train = s["by_split"]["train_probe"]
    assert train["gain"] > 0 and train["aligned"] > train["base"]
    assert s["alignment_gain"] == s["by_split"]["test"]["gain"]
    assert [r["step"] for r in res.tables[0][1]] == [0, 2, 4]  # probed every 2 of 4 flip steps
    # Flipped training lowers the training pairs' difference from both starts.
    assert train["drop_from_base"] > 0 and train["drop_from_aligned"] > 0
    assert {f.name for f in res.figures} == {"hh_logp_diff_test", "hh_logp_diff_train_probe",
                                             "hh_flipped_loss"}
    assert len(res.notes) == 2
    assert s["n_train"] == 8 and s["n_test"] == 4


def test_aligned_start_equals_end_of_alignment():
    loaded = tiny_loaded()
    records = []

    class Sink:
        def log(self, r):
            records.append(r)
    run_hh_rlhf(loaded, _pairs(12), dataclasses.replace(TINY, flip_steps=2), seed=1, sink=Sink())
    probe = {(r["run"], r["step"]): r["logp_diff"] for r in records if r.get("split") == "test"}
    train = {(r["run"], r["step"]): r["logp_diff"] for r in records if r.get("split") == "train_probe"}
    assert train[("flip_from_aligned", 0)] == pytest.approx(train[("align", TINY.align_steps)], abs=1e-4)
    first = {r["run"]: r["loss"] for r in records if r.get("split") == "train" and r["step"] == 1}
    # Each run's reference is its own start (not a cached base-model reference).
    assert first == pytest.approx({"align": math.log(2), "flip_from_base": math.log(2),
                                   "flip_from_aligned": math.log(2)}, abs=1e-5)
    assert probe[("flip_from_aligned", 0)] == pytest.approx(probe[("align", TINY.align_steps)], abs=1e-4)
    assert probe[("flip_from_base", 0)] == pytest.approx(probe[("align", 0)], abs=1e-5)


@pytest.mark.skipif(not HH.exists(), reason="../shared/data/hh-rlhf absent")
def test_real_hh_pairs_select_with_the_quick_cap():
    pairs = load_pairs(HH, on_error="skip")
    tok = tiny_tokenizer()
    train, test = select_pairs(pairs, tok, 16, 8, 400, seed=0)
    assert len(train) == 16 and len(test) == 8
    assert all(p.prompt.endswith("\n\nAssistant:") for p in train + test)
