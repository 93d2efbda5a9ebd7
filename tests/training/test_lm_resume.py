"""A LoRA run killed with SIGKILL and resumed ends exactly like an unbroken one."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefdyn.tracking.run_dir import read_metrics
from tests.training.test_checkpoint import _assert_metrics_close

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import os, signal, sys
    from prefdyn._runtime import set_seed
    from prefdyn.models import answer_token_ids
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_runner import fit_lm
    from tests._tiny import tiny_loaded
    from tests.policies.test_lm import _behavior

    class KillAt(Callback):
        def on_step_end(self, state, policy, out):
            if state.step == {kill_at}:
                os.kill(os.getpid(), signal.SIGKILL)

    set_seed(3)
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    statements = ["I like cats", "Kindness", "The quick brown fox", "I enjoy pain", "Help"]
    stream = answer_batches(_behavior(tok, statements), tok, yes_id, no_id, batch_size=2, seed=1)
    cfg = TrainConfig(optimizer="adamw", lr=5e-3, steps=8, grad_accum=2, seed=3)
    # LoRA dropout 0.3: the RNG state must be restored too, or the resumed run drifts
    fit_lm(loaded, stream, cfg, mode="lora", run_folder=sys.argv[1], checkpoint_every=3,
           lora_kwargs={{"dropout": 0.3}}, callbacks=[KillAt()])
""")


def _child(run_folder: Path, kill_at: int | None, cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
           "PREFDYN_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", _CHILD.format(kill_at=kill_at), str(run_folder)],
                          check=False, env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=300)


def test_killed_and_resumed_lora_run_equals_an_unbroken_one(tmp_path):
    unbroken, broken, cache = tmp_path / "unbroken", tmp_path / "broken", tmp_path / "cache"
    done = _child(unbroken, None, cache)
    assert done.returncode == 0, done.stderr

    killed = _child(broken, 5, cache)
    assert killed.returncode == -9, killed.stderr
    ckpts = broken / "checkpoints"
    assert (ckpts / "latest").read_text() == "step_00000003"
    assert max(r["step"] for r in read_metrics(broken / "metrics.jsonl")) == 5
    assert not (broken / "summary.json").exists()

    resumed = _child(broken, None, cache)
    assert resumed.returncode == 0, resumed.stderr
    final = "checkpoints/step_00000008/model.safetensors"
    a, b = load_file(unbroken / final), load_file(broken / final)
    assert a.keys() == b.keys() and all("lora_" in k for k in a)
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=0, atol=1e-6)
    got, want = read_metrics(broken / "metrics.jsonl"), read_metrics(unbroken / "metrics.jsonl")
    assert [r["step"] for r in want] == list(range(1, 9))
    _assert_metrics_close(got, want)


def test_resuming_with_another_config_is_refused(tmp_path):
    from prefdyn.errors import PrefdynError
    from prefdyn.training import TrainConfig
    from prefdyn.training.checkpoint import save_checkpoint
    from prefdyn.training.lm_resume import open_run_folder
    from prefdyn.training.resume import config_dict

    cfg = TrainConfig(optimizer="adamw", lr=1e-3)
    w = torch.nn.Linear(2, 2)
    save_checkpoint(tmp_path / "checkpoints", step=2, policy=w,
                    optimizer=torch.optim.SGD(w.parameters(), lr=0.1),
                    extra={"config": config_dict(cfg), "mode": "lora"})
    assert open_run_folder(tmp_path, cfg, mode="lora").start_step == 2
    with pytest.raises(PrefdynError, match="another run"):
        open_run_folder(tmp_path, cfg, mode="full")
    with pytest.raises(PrefdynError, match="another run"):
        open_run_folder(tmp_path, TrainConfig(optimizer="adamw", lr=1e-2), mode="lora")
