"""RewardSpreadCallback: by hand, and in a few real TRL GRPOTrainer steps on a tiny model."""

import math

import pytest

from prefdyn.errors import PrefdynError
from prefdyn.integrations.trl import RewardSpreadCallback
from prefdyn.tracking import read_metrics
from tests._tiny import tiny_llama, tiny_tokenizer


def test_spread_and_prediction_by_hand(tmp_path):
    spread = RewardSpreadCallback(tmp_path, num_generations=2)
    logged = {}
    first = spread.observe(["a", "a", "b", "b"], [1, 1, 0, 1], step=1,
                           log_metric=lambda k, v: logged.__setitem__(k, v))
    assert first["frac_reward_zero_std"] == 0.5  # prompt a: both 1
    assert first["reward_std"] == pytest.approx(math.sqrt(0.5) / 2)  # (0 + std(0, 1)) / 2, Bessel
    assert "predicted_frac_zero_std" not in first  # no prompt seen before
    assert logged["prefdyn/frac_reward_zero_std"] == 0.5
    # p_a = 1 (2 of 2 earlier samples), p_b = 1/2: mean of (1 + 0) and (1/4 + 1/4)
    second = spread.observe(["b", "b", "a", "a"], [0, 0, 1, 0], step=2)
    assert second["predicted_frac_zero_std"] == pytest.approx((1 + 0.5) / 2)
    assert second["frac_reward_zero_std"] == 0.5
    third = spread.observe(["c", "c"], [0.3, 0.3], step=3)  # not a 0/1 reward: no prediction
    assert third["frac_reward_zero_std"] == 1.0 and "predicted_frac_zero_std" not in third
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[0]["reward_std_per_prompt"] == pytest.approx([0.0, math.sqrt(0.5)])
    with pytest.raises(PrefdynError, match="groups of 2 of one prompt"):
        spread.observe(["a", "b", "a", "b"], [1, 0, 1, 0])


def test_grpo_trainer_logs_the_spread_beside_trls_own(tmp_path):
    pytest.importorskip("trl")
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def odd_length(prompts, completions, **kwargs):
        return [float(len(c) % 2) for c in completions]

    spread = RewardSpreadCallback(tmp_path / "run")
    args = GRPOConfig(output_dir=str(tmp_path / "trl"), per_device_train_batch_size=4, num_generations=2,
                      max_completion_length=4, max_steps=2, learning_rate=1e-3, report_to="none",
                      use_cpu=True, save_strategy="no", logging_steps=1, disable_tqdm=True, seed=0)
    trainer = GRPOTrainer(model=tiny_llama().train(), reward_funcs=spread.watch(odd_length), args=args,
                          train_dataset=Dataset.from_list([{"prompt": p} for p in ["Is it kind?", "Say yes."] * 2]),
                          processing_class=tiny_tokenizer(), callbacks=[spread])
    trainer.train()
    logs = [r for r in trainer.state.log_history if "frac_reward_zero_std" in r]
    assert [r["step"] for r in logs] == [1, 2]
    for r in logs:  # one reward function of weight 1: prefdyn's share is TRL's
        assert r["prefdyn/frac_reward_zero_std"] == pytest.approx(r["frac_reward_zero_std"])
    assert "prefdyn/predicted_frac_zero_std" in logs[1]  # a prompt of step 1 came back (seed 0)
    records = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["split"] == "train"]
    assert [r["step"] for r in records] == [1, 2] and records[0]["k"] == 2
    assert len(records[0]["reward_std_per_prompt"]) == 2
