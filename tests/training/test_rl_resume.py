"""An RL run (rollouts, GRPO with a KL penalty) killed with SIGKILL mid-run and resumed
with the same command ends with the same weights and metrics as an unbroken one: the
sampling RNG, the optimizer and the stream position come back from the checkpoint."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefdyn.errors import PrefdynError, TrainingError
from prefdyn.tracking.run_dir import read_metrics
from tests._tiny import TEST_DEVICE
from tests.training.test_checkpoint import _assert_metrics_close

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from prefdyn._runtime import set_seed
    from prefdyn.policies.rollout import RolloutPolicy, RolloutStream
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.training import TrainConfig
    from prefdyn.training.rl_runner import fit_rl
    from tests._tiny import TEST_DEVICE, chat_prompts, tiny_llama, tiny_tokenizer

    class KillAt(Callback):
        def on_step_end(self, state, policy, out):
            if state.step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    def length_reward(prompts, responses, references):  # varied, so advantages are not 0
        return torch.tensor([float(len(r)) for r in responses])

    set_seed(3)
    tok, model, ref = tiny_tokenizer(), tiny_llama().to(TEST_DEVICE), tiny_llama(seed=1).to(TEST_DEVICE)
    prompts = chat_prompts(tok, ["I like cats", "Kindness", "The quick brown fox", "Help"])
    stream = RolloutStream(model, tok, prompts, length_reward, group_size=3, prompts_per_batch=2,
                           max_new_tokens=5, temperature=0.9, seed=7, reference=ref)
    cfg = TrainConfig(loss="grpo", optimizer="adamw", lr=1e-2, steps=6, seed=3)
    fit_rl(model, RolloutPolicy(model, temperature=0.9), stream, cfg, loss_kwargs={{"beta": 0.05}},
           run_folder=sys.argv[1], checkpoint_every=2, callbacks=[KillAt()])
""")


def _child(run_folder: Path, kill_at: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _CHILD.format(kill_at=kill_at), str(run_folder)],
                          check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_killed_and_resumed_grpo_run_equals_an_unbroken_one(tmp_path):
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    done = _child(unbroken, None)
    assert done.returncode == 0, done.stderr

    killed = _child(broken, 5)
    assert killed.returncode == -9, killed.stderr
    assert (broken / "checkpoints" / "latest").read_text() == "step_00000004"
    assert max(r["step"] for r in read_metrics(broken / "metrics.jsonl")) == 5
    assert not (broken / "summary.json").exists()

    resumed = _child(broken, None)
    assert resumed.returncode == 0, resumed.stderr
    final = "checkpoints/step_00000006/model.safetensors"
    a, b = load_file(unbroken / final), load_file(broken / final)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    got, want = read_metrics(broken / "metrics.jsonl"), read_metrics(unbroken / "metrics.jsonl")
    assert [r["step"] for r in want] == list(range(1, 7))
    assert {"reward", "advantage", "kl", "clip_frac", "loss", "grad_norm"} <= want[0].keys()
    assert len({r["reward"] for r in want}) > 1  # the samples (and their rewards) changed
    # A GPU's reductions are not bitwise repeatable: on an H200 two runs' grad norms (~28)
    # differed by 7e-8 relative at step 2, before any resume. The CPU's are.
    _assert_metrics_close(got, want, rel=0.0 if TEST_DEVICE.type == "cpu" else 1e-5)


def _bandit_setup(seed: int = 0):
    from prefdyn.policies.bandit import BanditPolicy, BanditStream
    from tests._tiny import tiny_llama

    model = tiny_llama(seed)
    stream = BanditStream([[5, 6], [7], [8, 9, 10]], [11, 12, 13],
                          vocab_size=model.config.vocab_size, pad_id=0, batch_size=2, seed=1)
    return model, BanditPolicy(model, group_size=4), stream


def test_resuming_with_other_loss_settings_is_refused(tmp_path):
    from prefdyn.training import TrainConfig
    from prefdyn.training.rl_runner import fit_rl

    cfg = TrainConfig(loss="rloo", optimizer="sgd", lr=0.1, steps=2)
    model, policy, stream = _bandit_setup()
    run = fit_rl(model, policy, stream, cfg, loss_kwargs={"beta": 0.0}, run_folder=tmp_path)
    assert [r["step"] for r in run.history.records] == [1, 2]
    assert (tmp_path / "checkpoints" / "latest").read_text() == "step_00000002"
    model, policy, stream = _bandit_setup()
    with pytest.raises(PrefdynError, match="another RL run"):
        fit_rl(model, policy, stream, TrainConfig(loss="rloo", optimizer="sgd", lr=0.1, steps=3),
               loss_kwargs={"beta": 0.5}, run_folder=tmp_path)


def test_the_loss_takes_cfg_beta_by_default_and_a_frozen_model_is_refused():
    from prefdyn.training import TrainConfig
    from prefdyn.training.rl_runner import fit_rl

    model, policy, stream = _bandit_setup()
    with pytest.raises(PrefdynError, match="beta > 0 needs the reference"):
        fit_rl(model, policy, stream, TrainConfig(loss="rloo", optimizer="sgd", lr=0.1, steps=1))
    model.requires_grad_(False)
    with pytest.raises(TrainingError, match="no trainable parameters"):
        fit_rl(model, policy, stream, TrainConfig(loss="rloo", lr=0.1, steps=1))
    with pytest.raises(TrainingError, match="RL runs train in one process"):
        fit_rl(model, policy, stream, TrainConfig(loss="rloo", lr=0.1, steps=1, sharding="full"))


def test_a_finished_run_without_its_optimizer_restores_and_refuses_more_steps(tmp_path):
    from prefdyn.training import TrainConfig
    from prefdyn.training.rl_runner import fit_rl

    cfg = TrainConfig(loss="rloo", optimizer="adamw", lr=0.1, steps=2)
    model, policy, stream = _bandit_setup()
    done = fit_rl(model, policy, stream, cfg, loss_kwargs={"beta": 0.0}, run_folder=tmp_path,
                  keep_optimizer=False)
    kept = tmp_path / "checkpoints" / "step_00000002"
    assert kept.is_dir() and not (kept / "optimizer.safetensors").exists()
    want = {k: v.detach().clone() for k, v in done.model.state_dict().items()}

    model, policy, stream = _bandit_setup()
    again = fit_rl(model, policy, stream, cfg, loss_kwargs={"beta": 0.0}, run_folder=tmp_path,
                   keep_optimizer=False)
    for k, v in again.model.state_dict().items():
        assert torch.equal(v, want[k]), k
    assert [r["step"] for r in again.history.records] == [1, 2]

    model, policy, stream = _bandit_setup()
    with pytest.raises(PrefdynError, match="finished at step 2.*cannot train on to step 3"):
        fit_rl(model, policy, stream, TrainConfig(loss="rloo", optimizer="adamw", lr=0.1, steps=3),
               loss_kwargs={"beta": 0.0}, run_folder=tmp_path)
