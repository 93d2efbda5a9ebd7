import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from prefdyn.policies import LastLayerPolicy
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.training import random_minibatches
from prefdyn.training.checkpoint import (
    ResumableMinibatches,
    finalize,
    load_checkpoint,
    restore,
    save_checkpoint,
)
from tests.training._synthetic import synthetic_data

REPO = Path(__file__).resolve().parents[2]


def _policy_and_adamw(seed=0):
    W = torch.randn(2, 8, generator=torch.Generator().manual_seed(seed))
    policy = LastLayerPolicy(W, 3)
    opt = torch.optim.AdamW([policy.W], lr=0.01, weight_decay=0.1)
    for _ in range(3):  # non-trivial moments and step count
        opt.zero_grad()
        (policy.W ** 2).sum().backward()
        opt.step()
    return policy, opt


def test_round_trip_restores_weights_adamw_state_and_rng(tmp_path):
    policy, opt = _policy_and_adamw()
    torch.manual_seed(1), random.seed(2), np.random.seed(3)
    save_checkpoint(tmp_path, step=7, policy=policy, optimizer=opt,
                    batch_state={"count": 7}, extra={"lr": 0.01})
    expected = (torch.rand(4), random.random(), np.random.rand())
    want_W, want_state = policy.W.detach().clone(), opt.state_dict()

    fresh, fresh_opt = _policy_and_adamw(seed=5)
    torch.manual_seed(9), random.seed(9), np.random.seed(9)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 7 and ckpt.batch_state == {"count": 7} and ckpt.extra == {"lr": 0.01}
    assert (tmp_path / "latest").read_text() == "step_00000007"
    restore(ckpt, fresh, fresh_opt)
    assert torch.equal(fresh.W, want_W) and torch.equal(fresh.W0, policy.W0)
    got = fresh_opt.state_dict()
    assert got["param_groups"] == want_state["param_groups"]
    for name in ("step", "exp_avg", "exp_avg_sq"):
        assert torch.equal(got["state"][0][name], want_state["state"][0][name]), name
    assert torch.equal(torch.rand(4), expected[0])
    assert random.random() == expected[1] and np.random.rand() == expected[2]


def test_corrupt_latest_falls_back_to_previous_with_warning(tmp_path):
    policy, opt = _policy_and_adamw()
    save_checkpoint(tmp_path, step=10, policy=policy, optimizer=opt, batch_state=None, extra=None)
    save_checkpoint(tmp_path, step=20, policy=policy, optimizer=opt, batch_state=None, extra=None)
    (tmp_path / "step_00000020" / "optimizer.safetensors").unlink()
    with pytest.warns(UserWarning, match="step_00000020"):
        ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 10
    (tmp_path / "step_00000010" / "model.safetensors").write_bytes(b"garbage")
    with pytest.warns(UserWarning):
        assert load_checkpoint(tmp_path) is None


def test_finalize_keeps_the_last_weights_only_and_refuses_to_train_on(tmp_path):
    policy, opt = _policy_and_adamw()
    save_checkpoint(tmp_path, step=2, policy=policy, optimizer=opt, batch_state={"n": 2})
    opt.step()
    policy.W.data += 1
    save_checkpoint(tmp_path, step=4, policy=policy, optimizer=opt, batch_state={"n": 4})
    kept = finalize(tmp_path)
    assert kept == tmp_path / "step_00000004"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step_00000004"]
    assert not (kept / "optimizer.safetensors").exists()
    assert not (kept / "optimizer.json").exists()
    assert finalize(tmp_path) == kept  # idempotent
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.step == 4 and ckpt.optimizer is None and ckpt.batch_state == {"n": 4}
    fresh, fresh_opt = _policy_and_adamw(seed=5)
    restore(ckpt, fresh)
    assert torch.equal(fresh.W, policy.W)
    with pytest.raises(ValueError, match="cannot train on"):
        restore(ckpt, fresh, fresh_opt)
    assert finalize(tmp_path / "nothing") is None


def test_resumable_minibatches_draw_what_random_minibatches_draw():
    data = synthetic_data(n=20)
    ours, ref = ResumableMinibatches(data, 5, seed=3), random_minibatches(data, 5, seed=3)
    for _ in range(4):
        assert torch.equal(next(ours).embeddings, next(ref).embeddings)
    saved = ours.state()
    want = [next(ours).embeddings for _ in range(3)]
    other = ResumableMinibatches(data, 5, seed=99)
    other.load_state(saved)
    assert other.count == 4
    for w in want:
        assert torch.equal(next(other).embeddings, w)


_CHILD = textwrap.dedent("""
    import os, signal, sys
    import torch
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.training import TrainConfig
    from prefdyn.training.resume import fit_last_layer_resumable
    from tests.training._synthetic import synthetic_data

    class KillAt(Callback):
        def on_step_end(self, state, policy, out):
            if state.step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    W = torch.randn(2, 8, generator=torch.Generator().manual_seed(1)) * 0.1
    cfg = TrainConfig(optimizer="adamw", lr=0.05, steps=40, batch_size=8, eval_every=5, seed=4)
    fit_last_layer_resumable(W, synthetic_data(), cfg, names=["a", "b", "c"],
                             run_folder=sys.argv[1], checkpoint_every=10,
                             test_data=synthetic_data(seed=10), callbacks=[KillAt()])
""")


def _child(run_folder: Path, kill_at: int | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    return subprocess.run([sys.executable, "-c", _CHILD.format(kill_at=kill_at), str(run_folder)],
                          check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_killed_and_resumed_run_equals_an_unbroken_one(tmp_path):
    unbroken, broken = tmp_path / "unbroken", tmp_path / "broken"
    assert _child(unbroken, None).returncode == 0

    killed = _child(broken, 25)
    assert killed.returncode == -9, killed.stderr
    ckpts = broken / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000020"
    assert not (ckpts / "step_00000030").exists()
    assert max(r["step"] for r in read_metrics(broken / "metrics.jsonl")) == 25

    resumed = _child(broken, None)
    assert resumed.returncode == 0, resumed.stderr
    final = "checkpoints/step_00000040/model.safetensors"
    a, b = load_file(unbroken / final), load_file(broken / final)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    _assert_metrics_close(read_metrics(broken / "metrics.jsonl"),
                          read_metrics(unbroken / "metrics.jsonl"))


def _assert_metrics_close(got: list[dict], want: list[dict], rel: float = 0.0) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for k in w:
            if isinstance(w[k], float):
                assert g[k] == pytest.approx(w[k], rel=rel, abs=1e-6), (w["step"], k)
            else:
                assert g[k] == w[k], (w["step"], k)
