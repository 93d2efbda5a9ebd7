"""Training memory per process, by hand on a made-up shape, and the 7B fact the docs quote."""

import pytest

from prefdyn.training.memory import LLAMA2_7B, ModelShape, training_memory


def test_hand_computed_full_sharding():
    shape = ModelShape("t", params=1000, layers=2, hidden=8, heads=2)
    got = training_memory(shape, processes=2, sharding="full", batch=4, seq=16)
    assert got.weights == 4000 / 2 + 2 * 4 * 500  # own shard + the running and prefetched layer
    assert got.gradients == 4000 / 2 and got.optimizer == 8000 / 2
    # 2 layers x s b h (34 + 5 a s / h), micro-batch 2, fp32 doubles the 16-bit figure
    assert got.activations == 2 * 16 * 2 * 8 * (34 + 5 * 2 * 16 / 8) * 2
    fsdp_bf16 = training_memory(shape, precision="bf16", processes=2, sharding="full")
    assert fsdp_bf16.weights == 4000 / 2 + 2 * 2 * 500  # layers gathered in bf16
    bf16 = training_memory(shape, precision="bf16", processes=2, sharding="grad_op", batch=4, seq=16)
    assert bf16.weights == 4000 + 2000  # + autocast's bf16 copies
    assert bf16.gradients == 2000 and bf16.activations == got.activations / 2
    zero1 = training_memory(shape, processes=4, sharding="optimizer")
    assert (zero1.weights, zero1.gradients, zero1.optimizer) == (4000, 4000, 2000)
    lora = training_memory(shape, trainable=10)
    assert (lora.weights, lora.gradients, lora.optimizer) == (4000, 40, 80)


def test_fp32_adamw_full_fine_tuning_of_a_7b_model_is_16_bytes_a_parameter():
    got = training_memory(LLAMA2_7B)
    assert got.weights + got.gradients + got.optimizer == pytest.approx(16 * 6.738e9, rel=1e-3)


def test_bad_arguments():
    with pytest.raises(ValueError, match="sharding"):
        training_memory(LLAMA2_7B, sharding="zero3")
    with pytest.raises(ValueError, match="processes"):
        training_memory(LLAMA2_7B, processes=0)
