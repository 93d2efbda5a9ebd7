"""Two gloo processes with weights, gradients and optimizer state sharded (FSDP, ZeRO-3)
train like one process, each holding half of the model, write whole checkpoints and
resume from them (and from an unsharded run's)."""

import json
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from prefdyn.tracking.run_dir import read_metrics
from tests.training.test_distributed import launch

_CHILD = textwrap.dedent("""
    import json, os, sys
    import torch
    from prefdyn._runtime import set_seed
    from prefdyn.models import answer_token_ids
    from prefdyn.training import TrainConfig
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_runner import fit_lm
    from prefdyn.tracking.callbacks import Callback
    from prefdyn.tracking.evaluate import answer_logprobs
    from prefdyn.tracking.snapshots import Probe, probe_embeddings
    from tests._tiny import tiny_loaded
    from tests.policies.test_lm import _behavior

    folder, steps, sharding, precision = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    set_seed(0)
    loaded = tiny_loaded(tie_word_embeddings=True)
    tok = loaded.tokenizer
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    statements = ["I like cats", "Kindness", "The quick brown fox", "I enjoy pain", "Help",
                  "No way", "Yes sir", "Cats and dogs"]
    stream = answer_batches(_behavior(tok, statements), tok, yes_id, no_id, batch_size=4, seed=1)
    cfg = TrainConfig(optimizer="adamw", lr=5e-3, steps=steps, sharding=sharding,
                      precision=precision, grad_accum=2)

    class Probes(Callback):  # the policy's other entry points, run by every process mid-run
        seen = []
        def on_step_end(self, state, policy, out):
            batch = next(iter(stream.in_order(4)))
            self.seen.append([float(answer_logprobs(policy, batch)[:, yes_id].sum()),
                              float(probe_embeddings(policy, probe, pad_id=0).sum())])

    ids = [tok(t)["input_ids"] for t in statements[:3]]
    probe = Probe(ids, groups=torch.zeros(3, dtype=torch.long),
                  prefers_yes=torch.tensor([True, False, True]), group_names=["toy"])
    run = fit_lm(loaded, stream, cfg, mode="full", run_folder=folder, checkpoint_every=3,
                 max_grad_norm=1.0, callbacks=[Probes()])
    first = run.optimizer.param_groups[0]["params"][0]  # the (tied) embedding
    local = sum((t.to_local() if hasattr(t, "to_local") else t).numel()
                for t in run.optimizer.state[first].values() if t.dim())
    # The run hands back a plain model with the trained weights on every process.
    final = {n: p.detach().clone() for n, p in run.policy.model.named_parameters()}
    assert not any(hasattr(p, "to_local") for p in final.values())
    yes, _ = run.policy.pair(next(iter(stream.in_order(4))))
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "local": local,
                      "total": 2 * final["model.embed_tokens.weight"].numel(),
                      "weights_sum": sum(float(p.double().sum()) for p in final.values()),
                      "chosen_logp": yes.tolist(), "probes": Probes.seen}))
""")


def _run(tmp_path: Path, folder: str, steps: int, sharding: str, world: int,
         precision: str = "fp32") -> list[dict]:
    """Run the child on ``world`` processes; each one's JSON line."""
    outs = launch(["-c", _CHILD, str(tmp_path / folder), str(steps), sharding, precision], world, tmp_path)
    return [json.loads(out.strip().splitlines()[-1]) for out in outs]


def _weights(tmp_path: Path, folder: str, step: int) -> dict:
    return load_file(tmp_path / folder / f"checkpoints/step_{step:08d}/model.safetensors")


def _metrics(tmp_path: Path, folder: str) -> list[dict]:
    return read_metrics(tmp_path / folder / "metrics.jsonl")


def test_fully_sharded_run_equals_one_process_and_resumes(tmp_path):
    [alone] = _run(tmp_path, "single", 6, "none", 1)
    ranks = _run(tmp_path, "sharded", 6, "full", 2)
    # Each process holds half of AdamW's two moments of the (tied) embedding, the first
    # parameter, where one process holds all of them.
    assert alone["local"] == alone["total"]
    assert [r["local"] for r in ranks] == [alone["total"] // 2] * 2
    # After the run both processes hand back the same whole, plain model, which scores
    # as the one-process run's does.
    assert ranks[0]["weights_sum"] == ranks[1]["weights_sum"]
    assert ranks[0]["weights_sum"] == pytest.approx(alone["weights_sum"], rel=1e-5)
    assert ranks[0]["chosen_logp"] == pytest.approx(alone["chosen_logp"], abs=1e-4)
    # Vocabulary log-probs and hidden-state snapshots taken during the run, sharded, equal
    # one process's.
    for rank in ranks:
        assert rank["probes"] == [pytest.approx(p, rel=1e-4) for p in alone["probes"]]

    one, two = _metrics(tmp_path, "single"), _metrics(tmp_path, "sharded")
    assert [r["step"] for r in two] == [1, 2, 3, 4, 5, 6]
    assert one[-1]["loss"] < one[0]["loss"] - 0.01  # it trains
    for key in ("loss", "grad_norm", "delta_W_U", "drift/layer_00"):
        assert [r[key] for r in two] == pytest.approx([r[key] for r in one], rel=1e-4, abs=1e-6), key
    single, sharded = _weights(tmp_path, "single", 6), _weights(tmp_path, "sharded", 6)
    assert set(sharded) == set(single)  # whole checkpoints, in the unsharded format
    for k in single:  # AdamW turns reduce round-off on ~0 gradients into 4% of a step (lr 5e-3)
        torch.testing.assert_close(sharded[k], single[k], atol=2e-4, rtol=0)

    # Killed after step 3 (its checkpoint whole), resumed sharded to step 6.
    _run(tmp_path, "resumed", 3, "full", 2)
    _run(tmp_path, "resumed", 6, "full", 2)
    assert [r["step"] for r in _metrics(tmp_path, "resumed")] == [1, 2, 3, 4, 5, 6]
    resumed = _weights(tmp_path, "resumed", 6)
    for k in sharded:
        torch.testing.assert_close(resumed[k], sharded[k], atol=1e-6, rtol=0)

    # An unsharded run's checkpoint resumes sharded, and the other way round.
    _run(tmp_path, "plain_then_sharded", 3, "none", 1)
    _run(tmp_path, "plain_then_sharded", 6, "full", 2)
    _run(tmp_path, "sharded_then_plain", 3, "full", 2)
    _run(tmp_path, "sharded_then_plain", 6, "none", 1)
    for folder in ("plain_then_sharded", "sharded_then_plain"):
        mixed = _weights(tmp_path, folder, 6)
        for k in single:
            torch.testing.assert_close(mixed[k], single[k], atol=2e-4, rtol=0)


def test_fully_sharded_bf16_stays_near_fp32(tmp_path):
    """FSDP's mixed precision (bf16 gathered weights, fp32 shards and reductions)."""
    _run(tmp_path, "fp32", 3, "none", 1)
    _run(tmp_path, "bf16", 3, "full", 2, precision="bf16")
    fp32, bf16 = _metrics(tmp_path, "fp32"), _metrics(tmp_path, "bf16")
    assert [r["loss"] for r in bf16] == pytest.approx([r["loss"] for r in fp32], abs=5e-3)
    assert [r["loss"] for r in bf16] != [r["loss"] for r in fp32]  # bf16 did run
    assert all(v.dtype == torch.float32 for v in _weights(tmp_path, "bf16", 3).values())


def test_lora_is_not_fully_sharded():
    from prefdyn.errors import TrainingError
    from prefdyn.policies.lm import LMPolicy, apply_lora
    from prefdyn.training.fsdp import shard_policy
    from tests._tiny import tiny_llama

    with pytest.raises(TrainingError, match="LoRA"):
        shard_policy(LMPolicy(apply_lora(tiny_llama(), seed=0)))


def test_uneven_last_batch_is_refused_before_training():
    """Every process must run as many forwards as the others: a last batch that would
    leave one without rows (9 rows, batches of 4: the last has 1) stops the run at setup."""
    from prefdyn.errors import TrainingError
    from prefdyn.models import answer_token_ids
    from prefdyn.training.lm_data import answer_batches
    from prefdyn.training.lm_setup import _check_even_shards
    from tests._tiny import tiny_tokenizer
    from tests.policies.test_lm import _behavior

    tok = tiny_tokenizer()
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    rows = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    with pytest.raises(TrainingError, match="last batch has 1 of 9 rows"):
        _check_even_shards(answer_batches(_behavior(tok, rows), tok, yes_id, no_id, batch_size=4, seed=0),
                           grad_accum=1, world=2)
    _check_even_shards(answer_batches(_behavior(tok, rows[:8]), tok, yes_id, no_id, batch_size=4, seed=0),
                       grad_accum=2, world=2)
