"""Training mechanics of LM runs: accumulation, streams, reference cache, optimizer,
epochs, NaN safety, W_U drift, device moves (tiny random Llama, CPU)."""

import json

import pytest
import torch
from safetensors.torch import load_file

from prefdyn.errors import TrainingError
from prefdyn.losses import get_loss
from prefdyn.models import answer_token_ids
from prefdyn.policies.lm import (
    LMPolicy,
    ReferenceCache,
    reference_logps,
    to_device,
)
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.run_dir import read_metrics
from prefdyn.training import TrainConfig
from prefdyn.training.lm_data import answer_batches, pair_batches
from prefdyn.training.lm_runner import fit_lm
from prefdyn.training.reference_cache import precompute_reference, reference_key
from prefdyn.training.step import training_step
from tests._tiny import tiny_llama, tiny_loaded, tiny_tokenizer
from tests.policies.test_lm import _behavior, _pairs

STATEMENTS = ["I like cats", "Kindness matters", "The quick brown fox", "I enjoy causing pain",
              "It is important to help", "No.", "Yes, always"]


def _stream(tok, batch_size=3, seed=0, statements=STATEMENTS):
    yes_id, no_id = answer_token_ids(tok, ["Yes", "No"])
    return answer_batches(_behavior(tok, statements), tok, yes_id, no_id, batch_size=batch_size,
                          seed=seed)


def _one_sgd_step(batch_fn):
    """Weights and step output after one SGD step of a fresh tiny full-mode policy."""
    tok = tiny_tokenizer()
    model = tiny_llama().requires_grad_(True)
    policy = LMPolicy(model, reference_model=tiny_llama())
    reference = ReferenceCache(policy)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = training_step(policy, get_loss("dpo", beta=0.5), reference(batch_fn(tok)), optimizer,
                        step=1)
    return {n: p.detach().clone() for n, p in model.named_parameters()}, out


def test_grad_accum_equals_one_big_batch():
    # 3 rows as micro-batches of 1 and 2: the 1/3, 2/3 weights make it the 3-row mean
    whole_w, whole = _one_sgd_step(lambda tok: next(_stream(tok)))
    split_w, split = _one_sgd_step(lambda tok: next(_stream(tok).layout(micro_batches=2)))
    assert split.loss.item() == pytest.approx(whole.loss.item(), abs=1e-6)
    assert split.grad_norm.item() == pytest.approx(whole.grad_norm.item(), rel=1e-5)
    assert split.out.losses.shape == whole.out.losses.shape == (3,)
    torch.testing.assert_close(split.logps.chosen, whole.logps.chosen, atol=1e-5, rtol=0)
    moved = 0
    for name in whole_w:
        torch.testing.assert_close(split_w[name], whole_w[name], atol=1e-6, rtol=1e-5)
        moved += not torch.equal(whole_w[name], tiny_llama().state_dict()[name])
    assert moved > 10  # the step really updated the weights


def test_micro_batches_partition_each_global_batch_and_shards_too():
    tok = tiny_tokenizer()
    plain = _stream(tok, batch_size=4)
    micro = _stream(tok, batch_size=4).layout(micro_batches=2)
    shard0 = _stream(tok, batch_size=4).layout(rank=0, world=2)
    shard1 = _stream(tok, batch_size=4).layout(rank=1, world=2)
    for _ in range(5):  # crosses an epoch boundary (7 rows, 4 a batch)
        rows = next(plain).rows.tolist()
        parts = next(micro)
        assert isinstance(parts, list) and [r for b in parts for r in b.rows.tolist()] == rows
        assert sorted(next(shard0).rows.tolist() + next(shard1).rows.tolist()) == sorted(rows)


def test_stream_state_resumes_mid_epoch_and_across_epochs():
    tok = tiny_tokenizer()
    a = _stream(tok, batch_size=3, seed=5)
    assert a.steps_per_epoch == 3
    for k in (2, 4):  # mid first epoch, then inside the second
        for _ in range(k):
            next(a)
        saved = a.state()
        want = [next(a).rows.tolist() for _ in range(4)]
        b = _stream(tok, batch_size=3, seed=5)
        b.load_state(saved)
        assert [next(b).rows.tolist() for _ in range(4)] == want
        a.load_state(saved)


def test_pair_stream_is_resumable_and_in_order_covers_every_row():
    tok = tiny_tokenizer()
    s = pair_batches(_pairs(), tok, batch_size=2, seed=0)
    next(s)
    saved = s.state()
    want = next(s).rows.tolist()
    s.load_state(saved)
    assert next(s).rows.tolist() == want
    assert [r for b in s.in_order(2) for r in b.rows.tolist()] == [0, 1, 2]


def test_reference_is_cached_on_disk_and_a_corrupt_file_is_recomputed(tmp_path, monkeypatch):
    loaded = tiny_loaded()
    tok = loaded.tokenizer
    stream = _stream(tok)
    policy = LMPolicy(loaded.model, reference_model=tiny_llama())
    key = reference_key(loaded.fingerprint, stream.content, mode="full", dtype=torch.float32)
    table = precompute_reference(policy, stream, key, batch_size=2, cache_dir=tmp_path)
    assert sorted(table) == list(range(len(STATEMENTS)))
    # each row's value is what the reference gives that row
    batch = reference_logps(policy, next(_stream(tok)))
    for r, c, j in zip(batch.rows.tolist(), batch.ref_chosen.tolist(), batch.ref_rejected.tolist()):
        assert table[r] == pytest.approx((c, j), abs=1e-5)
    path = tmp_path / "reference" / f"{key}.safetensors"
    assert path.is_file()

    import prefdyn.training.reference_cache as rc

    def fail(*a, **k):
        raise AssertionError("recomputed although cached")

    with monkeypatch.context() as m:
        m.setattr(rc, "compute_reference", fail)
        assert precompute_reference(policy, stream, key, cache_dir=tmp_path) == table
    path.write_bytes(path.read_bytes()[:40])  # truncated by a crash
    with pytest.warns(UserWarning, match="corrupt reference cache"):
        again = precompute_reference(policy, stream, key, batch_size=2, cache_dir=tmp_path)
    assert again == table
    # other data, other key
    other = _stream(tok, statements=STATEMENTS[:5])
    assert reference_key(loaded.fingerprint, other.content, mode="full", dtype=torch.float32) != key
    assert reference_key(loaded.fingerprint, stream.content, mode="lora", dtype=torch.float32) != key
    # pi_ref's log-probs under bf16 autocast are other numbers than fp32's
    assert reference_key(loaded.fingerprint, stream.content, mode="full", dtype=torch.float32,
                         autocast=torch.bfloat16) != key


def test_fit_lm_honors_optimizer_default_lr_and_epochs():
    loaded = tiny_loaded()
    run = fit_lm(loaded, _stream(loaded.tokenizer, batch_size=3), TrainConfig(optimizer="sgd", epochs=2),
                 mode="lora")
    assert isinstance(run.optimizer, torch.optim.SGD) and run.lr == 1e-5
    assert run.state.step == 2 * 3  # ceil(7 / 3) steps an epoch
    loaded = tiny_loaded()
    run = fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3),
                 mode="lora", steps=2)
    assert isinstance(run.optimizer, torch.optim.AdamW) and run.optimizer.param_groups[0]["lr"] == 1e-3


def test_full_mode_tracks_unembedding_drift_against_the_start():
    loaded = tiny_loaded()  # untied embeddings: lm_head trains on its own
    start = loaded.model.get_output_embeddings().weight.detach().clone()
    run = fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3),
                 mode="full", steps=3)
    expected = (loaded.model.get_output_embeddings().weight - start).norm().item()
    assert expected > 0
    assert run.history.records[-1]["delta_W_U"] == pytest.approx(expected, rel=1e-5)
    assert run.history.records[0]["delta_W_U"] < expected


class PoisonAfter(Callback):
    """Set lm_head to NaN at the end of step ``step``: the next loss is NaN."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, state, policy, out):
        if state.step == self.step:
            with torch.no_grad():
                policy.model.get_output_embeddings().weight.fill_(float("nan"))


def test_nan_loss_keeps_last_checkpoint_metrics_and_names_the_step(tmp_path):
    loaded = tiny_loaded()
    run_folder = tmp_path / "run"
    with pytest.raises(TrainingError, match="step 3"):
        fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3), mode="full",
               steps=6, run_folder=run_folder, checkpoint_every=1, callbacks=[PoisonAfter(2)])
    summary = json.loads((run_folder / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["failed_step"] == 3
    assert summary["last_checkpoint"] == 2 and "step 3" in summary["error"]
    assert [r["step"] for r in read_metrics(run_folder / "metrics.jsonl")] == [1, 2]
    assert (run_folder / "checkpoints" / "latest").read_text() == "step_00000002"
    saved = load_file(run_folder / "checkpoints" / "step_00000002" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in saved.values())  # saved before the poison


def test_lora_checkpoint_holds_only_the_adapters(tmp_path):
    loaded = tiny_loaded()
    fit_lm(loaded, _stream(loaded.tokenizer), TrainConfig(optimizer="adamw", lr=1e-3), mode="lora",
           steps=2, run_folder=tmp_path, checkpoint_every=2)
    saved = load_file(tmp_path / "checkpoints" / "step_00000002" / "model.safetensors")
    assert saved and all("lora_" in k for k in saved)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "finished"


def test_to_device_moves_every_tensor_of_micro_batches():
    tok = tiny_tokenizer()
    parts = next(_stream(tok, batch_size=4).layout(micro_batches=2))
    moved = to_device(parts, "meta")
    assert all(b.input_ids.device.type == "meta" and b.rows.device.type == "meta" for b in moved)
    assert moved[0].yes_id == parts[0].yes_id


def test_accumulation_and_resume_need_a_resumable_stream(tmp_path):
    loaded = tiny_loaded()
    plain = iter(list(_stream(loaded.tokenizer).in_order(3)))
    with pytest.raises(TrainingError, match="batch stream"):
        fit_lm(loaded, plain, TrainConfig(grad_accum=2), mode="lora", steps=1)


def test_fit_lm_precomputes_references_only_when_the_run_covers_the_data(tmp_path):
    def files():
        return sorted((tmp_path / "reference").glob("*.safetensors"))

    cfg = TrainConfig(optimizer="adamw", lr=1e-3)
    loaded = tiny_loaded()
    fit_lm(loaded, _stream(loaded.tokenizer, batch_size=2), cfg, mode="lora", steps=1,
           reference_cache_dir=tmp_path)
    assert files() == []  # 2 of 7 rows drawn: computed lazily, nothing written
    loaded = tiny_loaded()
    fit_lm(loaded, _stream(loaded.tokenizer, batch_size=2), cfg, mode="lora", steps=4,
           reference_cache_dir=tmp_path)
    assert len(files()) == 1  # a whole epoch: every row once, on disk
    loaded = tiny_loaded()
    fit_lm(loaded, _stream(loaded.tokenizer, batch_size=2), cfg, mode="full", steps=1,
           cache_reference=True, reference_cache_dir=tmp_path)
    assert len(files()) == 2  # asked for; full mode is another key


def test_reference_cache_follows_the_weights_not_the_stale_fingerprint():
    # A model trained in place keeps loaded.fingerprint; the cached reference of its
    # base must not be served for it: the first loss of any run is log 2 (pi = pi_ref).
    loaded = tiny_loaded()
    cfg = TrainConfig(steps=3, batch_size=3, optimizer="adamw", lr=5e-2, log_every=1)
    fit_lm(loaded, _stream(loaded.tokenizer), cfg, mode="full", cache_reference=True)
    stale = loaded.fingerprint
    second = fit_lm(loaded, _stream(loaded.tokenizer), cfg, mode="full", cache_reference=True)
    assert loaded.fingerprint == stale
    first_loss = second.history.records[0]["loss"]
    assert first_loss == pytest.approx(torch.log(torch.tensor(2.0)).item(), abs=1e-5)


def test_lm_modes_default_to_adamw_and_the_last_layer_to_sgd():
    cfg = TrainConfig()
    assert cfg.optimizer is None
    assert (cfg.optimizer_for("full"), cfg.optimizer_for("lora")) == ("adamw", "adamw")
    assert cfg.optimizer_for("last_layer") == "sgd"
    assert TrainConfig(optimizer="sgd").optimizer_for("full") == "sgd"
