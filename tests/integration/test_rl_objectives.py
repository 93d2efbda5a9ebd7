"""One short run per RL-side objective on the real embedded model and real data.

reinforce, rloo, grpo, ppo_clip (rollouts on HH-RLHF prompts scored by ROUGE-L against
the chosen response), sft (teacher-forced HH references), expected_reward (the persona
bandit, exact) and bradley_terry (the head-only reward model on HH pairs): each runs
two steps through :func:`prefdyn.training.rl_runner.fit_rl` (or the reward model's
fit, the same loop), with only the last decoder block trainable to keep the whole file
within a few minutes on 2 CPU cores. Each checks the step ran, its loss and gradient
are finite, the objective's metrics were recorded, and the trainable weights moved
exactly when the gradient was not zero (and nothing else moved).
"""

import copy
import math
from pathlib import Path

import pytest
import torch

import prefdyn.training.loop as loop_module
from prefdyn.data import TaskConfig, build_behavior, load_persona_dir, load_task
from prefdyn.data.generation import HH_DATA
from prefdyn.models import load_model
from prefdyn.policies.bandit import BanditPolicy, persona_bandit_stream
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream
from prefdyn.policies.teacher_forcing import ReferenceStream
from prefdyn.rewards import get_reward
from prefdyn.training import TrainConfig
from prefdyn.training.rl_runner import fit_rl

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
HH = ROOT / HH_DATA
PERSONA = ROOT.parent / "shared" / "data" / "persona"


@pytest.fixture(scope="module")
def loaded():
    return load_model()


@pytest.fixture(scope="module")
def hh(loaded):
    if not HH.is_file():
        pytest.skip(f"HH-RLHF data not found at {HH}")
    return load_task("hh", path=str(HH), n=4, tokenizer=loaded.tokenizer, max_prompt_tokens=40,
                     max_reference_tokens=24, single_turn=True)


def _last_block_only(loaded):
    """A copy of the model whose last decoder block alone trains."""
    model = copy.deepcopy(loaded.model).requires_grad_(False)
    model.get_decoder().layers[-1].requires_grad_(True)
    return model


def _check(run, model, start, metrics):
    records = run.history.records
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["grad_norm"]) for r in records)
    assert metrics <= records[0].keys()
    moved = {n for n, p in model.named_parameters() if not torch.equal(p, start[n])}
    last = f"layers.{len(model.get_decoder().layers) - 1}."
    assert all(last in n for n in moved)
    assert bool(moved) == any(r["grad_norm"] > 0 for r in records)


@pytest.fixture
def steps(monkeypatch):
    """The steps that went through the one training step."""
    seen = []
    real = loop_module.training_step
    monkeypatch.setattr(loop_module, "training_step",
                        lambda *a, **kw: seen.append(kw["step"]) or real(*a, **kw))
    return seen


@pytest.mark.parametrize("loss, loss_kwargs, metrics", [
    ("reinforce", {"baseline": 0.1}, {"reward", "advantage"}),
    ("rloo", {}, {"reward", "advantage"}),
    ("grpo", {"beta": 0.04}, {"reward", "advantage", "clip_frac", "kl"}),
    ("ppo_clip", {}, {"reward", "advantage", "clip_frac"}),
])
def test_policy_gradient_objectives_on_hh_prompts(loaded, hh, steps, loss, loss_kwargs, metrics):
    model = _last_block_only(loaded)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    reference = loaded.model if loss_kwargs.get("beta") else None
    stream = RolloutStream(model, loaded.tokenizer, hh.prompts, get_reward("rouge_l"),
                           references=hh.references, group_size=3, prompts_per_batch=2,
                           max_new_tokens=8, temperature=1.0, seed=0, reference=reference)
    run = fit_rl(model, RolloutPolicy(model), stream,
                 TrainConfig(loss=loss, optimizer="adamw", lr=1e-4, steps=2),
                 loss_kwargs={"beta": 0.0, **loss_kwargs})
    assert steps == [1, 2]
    _check(run, model, start, metrics)


def test_sft_on_hh_references(loaded, hh, steps):
    model = _last_block_only(loaded)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    stream = ReferenceStream(loaded.tokenizer, hh.prompts, hh.references, batch_size=2, seed=0)
    run = fit_rl(model, RolloutPolicy(model), stream,
                 TrainConfig(loss="sft", optimizer="adamw", lr=1e-4, steps=2))
    assert steps == [1, 2]
    _check(run, model, start, {"target_logp", "length"})
    assert all(r["grad_norm"] > 0 for r in run.history.records)


def test_exact_expected_reward_on_the_persona_bandit(loaded, steps):
    if not PERSONA.is_dir():
        pytest.skip(f"persona data not found at {PERSONA}")
    items = load_persona_dir(PERSONA, ["agreeableness"])["agreeableness"]
    behavior = build_behavior("agreeableness", items, loaded.tokenizer, TaskConfig(n_per_behavior=8))
    model = _last_block_only(loaded)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    stream = persona_bandit_stream(behavior, model, loaded.tokenizer, batch_size=4, seed=0)
    run = fit_rl(model, BanditPolicy(model), stream,
                 TrainConfig(loss="expected_reward", optimizer="adamw", lr=1e-4, steps=2),
                 loss_kwargs={})
    assert steps == [1, 2]
    _check(run, model, start, {"reward", "reward_std"})
    assert all(-1 <= r["reward"] <= 1 for r in run.history.records)


def test_bradley_terry_reward_model_on_hh_pairs(loaded, steps, tmp_path):
    from prefdyn.experiments.reward_model import (
        RewardModelParams,
        hh_reward_model,
        settings_from,
    )

    if not HH.is_file():
        pytest.skip(f"HH-RLHF data not found at {HH}")
    p = RewardModelParams(pairs=str(HH), n_train=8, n_test=4, max_tokens=48)
    trained = hh_reward_model(loaded, p, settings_from(p, steps=2, batch_size=4),
                              cache_dir=tmp_path)
    assert steps == [1, 2] and not trained.cached
    records = trained.history.records
    assert records[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # the zero head
    assert {"chosen_reward", "rejected_reward", "grad_norm"} <= records[0].keys()
    assert trained.heldout["pairs"] == 4 and 0 <= trained.heldout["accuracy"] <= 1
