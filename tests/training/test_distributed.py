"""Two CPU processes (gloo) train like one process on the same global batch."""

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from safetensors.torch import load_file

from prefdyn.tracking.run_dir import read_metrics
from tests.training._weights import assert_adamw_weights_close

REPO = Path(__file__).resolve().parents[2]

_CHILD = textwrap.dedent("""
    import sys
    from prefdyn._runtime import set_seed
    from prefdyn.models import answer_token_ids
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_runner import fit_lm
    from tests._tiny import tiny_loaded
    from tests.policies.test_lm import _behavior

    set_seed(0)
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    statements = ["I like cats", "Kindness", "The quick brown fox", "I enjoy pain", "Help",
                  "No way", "Yes sir", "Cats and dogs", "It is important"]
    stream = answer_batches(_behavior(tok, statements), tok, yes_id, no_id, batch_size=4, seed=1)
    cfg = TrainConfig(optimizer="adamw", lr=2e-2, steps=5)
    fit_lm(loaded, stream, cfg, mode="full", run_folder=sys.argv[1], checkpoint_every=5)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(tmp_path: Path, **extra) -> dict:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)]),
            "PREFDYN_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1", **extra}


def launch(argv: list[str], world: int, tmp_path: Path, **extra_env) -> list[str]:
    """Run ``python argv`` as ``world`` gloo processes (one plain process for 1), as a
    launcher would; each process's stdout, after checking that it exited cleanly."""
    env = _env(tmp_path, **extra_env)
    if world == 1:
        envs = [env]
    else:
        port = str(_free_port())
        envs = [{**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port, "RANK": str(rank),
                 "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world)} for rank in range(world)]
    procs = [subprocess.Popen([sys.executable, *argv], env=e, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for e in envs]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err
        outs.append(out)
    return outs


def test_two_gloo_processes_match_one_process(tmp_path):
    single = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "single")], env=_env(tmp_path),
                            cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert single.returncode == 0, single.stderr

    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / f"rank{rank}")],
                              env=_env(tmp_path, MASTER_ADDR="127.0.0.1", MASTER_PORT=port,
                                       RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2"),
                              cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err

    assert not (tmp_path / "rank1").exists()  # only rank 0 writes
    one, two = read_metrics(tmp_path / "single/metrics.jsonl"), read_metrics(tmp_path / "rank0/metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5]
    losses_one, losses_two = [r["loss"] for r in one], [r["loss"] for r in two]
    assert losses_one[-1] < losses_one[0] - 0.01  # it trains
    # metrics are over the global batch (gathered), the update uses averaged gradients
    assert losses_two == pytest.approx(losses_one, abs=1e-5)
    assert [r["grad_norm"] for r in two] == pytest.approx([r["grad_norm"] for r in one], rel=1e-4)
    final = "checkpoints/step_00000005/model.safetensors"
    a, b = load_file(tmp_path / "single" / final), load_file(tmp_path / "rank0" / final)
    assert_adamw_weights_close(b, a, lr=2e-2)
