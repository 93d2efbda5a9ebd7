"""Runs on an accelerator reach a CPU run's numbers: DPO through ``fit_lm(device=...)``,
the bandit's exact expected reward through ``fit_rl``, and a rollout batch's log-probs
and gradients. Set ``PREFDYN_TEST_DEVICE=cuda`` on a GPU machine; elsewhere there is
no second device and these are skipped. (tests/policies/test_decode_replay.py and
tests/training/test_rl_resume.py run on that device too.)"""

import copy

import pytest
import torch

from prefdyn.policies.bandit import BanditPolicy, BanditStream
from prefdyn.policies.lm import to_device
from prefdyn.policies.rollout import RolloutPolicy, RolloutStream
from prefdyn.rewards import get_reward
from prefdyn.tracking.callbacks import Callback
from prefdyn.training import TrainConfig
from prefdyn.training.lm_runner import fit_lm
from prefdyn.training.recompute import recomputed_activations
from prefdyn.training.rl_runner import fit_rl
from tests._tiny import TEST_DEVICE, chat_prompts, tiny_llama, tiny_loaded, tiny_tokenizer
from tests.training.test_lm_mechanics import _stream as answer_stream

pytestmark = pytest.mark.skipif(TEST_DEVICE.type == "cpu",
                                reason="no second device: set PREFDYN_TEST_DEVICE=cuda "
                                       "where one is")


class Losses(Callback):
    def __init__(self):
        self.losses = []

    def on_step_end(self, state, policy, out):
        self.losses.append(float(out.loss))


def _assert_same_run(cpu: tuple[list, torch.nn.Module], dev: tuple[list, torch.nn.Module]):
    assert dev[0] == pytest.approx(cpu[0], rel=1e-4, abs=1e-6)
    for (name, p), q in zip(cpu[1].named_parameters(), dev[1].parameters()):
        assert q.device.type == TEST_DEVICE.type, name
        torch.testing.assert_close(q.cpu(), p, rtol=1e-4, atol=1e-5, msg=name)


def _dpo(device):
    loaded, probe = tiny_loaded(), Losses()
    fit_lm(loaded, answer_stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-2),
           mode="full", steps=4, device=str(device), callbacks=[probe])
    return probe.losses, loaded.model


def test_a_dpo_run_on_the_device_equals_the_cpu_run():
    _assert_same_run(_dpo("cpu"), _dpo(TEST_DEVICE))


def _bandit(device):
    model, probe = tiny_llama(hidden=16, vocab=5, init_std=0.3).to(device), Losses()
    stream = BanditStream([[1, 2, 3], [2, 4], [3, 3, 1]], [2, 4, 0], vocab_size=5, pad_id=0,
                          batch_size=3)
    cfg = TrainConfig(loss="expected_reward", optimizer="adamw", lr=1e-2, steps=4)
    fit_rl(model, BanditPolicy(model, reference=copy.deepcopy(model)), stream, cfg,
           loss_kwargs={"beta": 0.1}, callbacks=[probe])
    return probe.losses, model


def test_a_bandit_run_on_the_device_equals_the_cpu_run():
    _assert_same_run(_bandit("cpu"), _bandit(TEST_DEVICE))


@pytest.mark.parametrize("checkpointing", [False, True], ids=["kept", "checkpointed"])
def test_rollout_log_probs_and_gradients_on_the_device_equal_the_cpu_ones(checkpointing):
    tok = tiny_tokenizer()
    cpu_model = tiny_llama()
    prompts = chat_prompts(tok, ["I like cats", "I enjoy causing pain to others.", "Hi"])
    # Sampled once, on the CPU (a device's generator draws other samples from one seed).
    batch = next(RolloutStream(cpu_model, tok, prompts, get_reward("sentiment"), group_size=3,
                               prompts_per_batch=3, max_new_tokens=6, temperature=0.8, seed=4,
                               replay=False))
    results = []
    for model, b in ((cpu_model, batch), (copy.deepcopy(cpu_model).to(TEST_DEVICE),
                                           to_device(batch, TEST_DEVICE))):
        with recomputed_activations(model, on=checkpointing):
            logps = RolloutPolicy(model, temperature=0.8).logps(b).logps
            weights = torch.linspace(-1, 1, logps.numel(), device=logps.device).reshape(logps.shape)
            (logps * weights).sum().backward()
        grads = {n: p.grad.cpu() for n, p in model.named_parameters()}
        results.append((logps.detach().cpu(), grads))
    (cpu_logps, cpu_grads), (dev_logps, dev_grads) = results
    torch.testing.assert_close(dev_logps, cpu_logps, rtol=1e-4, atol=1e-5)
    for name, grad in cpu_grads.items():
        assert (dev_grads[name] - grad).norm() <= 1e-4 * grad.norm() + 1e-7, name
