"""Two gloo processes with the optimizer state sharded (ZeRO-1) train like one process,
each holding part of the state, and resume from their own checkpoint."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefdyn.errors import PrefdynError
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.training import TrainConfig
from tests.training._weights import assert_adamw_weights_close
from tests.training.test_distributed import launch

_CHILD = textwrap.dedent("""
    import json, os, sys
    from prefdyn._runtime import set_seed
    from prefdyn.models import answer_token_ids
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_runner import fit_lm
    from tests._tiny import tiny_loaded
    from tests.policies.test_lm import _behavior

    folder, steps, sharding = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    set_seed(0)
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    statements = ["I like cats", "Kindness", "The quick brown fox", "I enjoy pain", "Help",
                  "No way", "Yes sir", "Cats and dogs", "It is important"]
    stream = answer_batches(_behavior(tok, statements), tok, yes_id, no_id, batch_size=4, seed=1)
    cfg = TrainConfig(optimizer="adamw", lr=2e-2, steps=steps, sharding=sharding)
    run = fit_lm(loaded, stream, cfg, mode="full", run_folder=folder, checkpoint_every=steps)
    local = getattr(run.optimizer, "optim", run.optimizer).state
    total = sum(1 for g in run.optimizer.param_groups for p in g["params"])
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "local": len(local), "total": total}))
""")


def _run(tmp_path: Path, folder: str, steps: int, sharding: str, world: int) -> list[dict]:
    """Run the child on ``world`` processes; each one's JSON line."""
    outs = launch(["-c", _CHILD, str(tmp_path / folder), str(steps), sharding], world, tmp_path)
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def _weights(tmp_path: Path, folder: str, step: int) -> dict:
    return load_file(tmp_path / folder / f"checkpoints/step_{step:08d}/model.safetensors")


def test_sharded_run_equals_one_process_and_resumes(tmp_path):
    _run(tmp_path, "single", 5, "none", 1)
    ranks = _run(tmp_path, "sharded", 5, "optimizer", 2)
    # Each process holds the state of part of the parameters, together all of them.
    assert all(0 < r["local"] < r["total"] for r in ranks)
    assert sum(r["local"] for r in ranks) == ranks[0]["total"]
    one, two = read_metrics(tmp_path / "single/metrics.jsonl"), read_metrics(tmp_path / "sharded/metrics.jsonl")
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in one][-1] < [r["loss"] for r in one][0] - 0.01  # it trains
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], abs=1e-5)
    single, sharded = _weights(tmp_path, "single", 5), _weights(tmp_path, "sharded", 5)
    assert_adamw_weights_close(sharded, single, lr=2e-2)

    # Killed after step 3 (its checkpoint holds the whole, consolidated optimizer state),
    # then resumed to step 5 with the state re-sharded: the uninterrupted run's weights.
    _run(tmp_path, "resumed", 3, "optimizer", 2)
    _run(tmp_path, "resumed", 5, "optimizer", 2)
    resumed = _weights(tmp_path, "resumed", 5)
    assert [r["step"] for r in read_metrics(tmp_path / "resumed/metrics.jsonl")] == [1, 2, 3, 4, 5]
    for k in sharded:
        torch.testing.assert_close(resumed[k], sharded[k], atol=1e-6, rtol=0)


def test_config_validates_sharding():
    with pytest.raises(PrefdynError, match="sharding"):
        TrainConfig(sharding="zero3")
