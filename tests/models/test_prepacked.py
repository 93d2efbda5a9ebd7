"""oneDNN-prepacked linears: the same products as F.linear, the model restored on exit."""

import pytest
import torch
from torch import nn

from prefdyn.models.prepacked import can_prepack, prepacked_linears
from tests._tiny import tiny_llama

pytestmark = pytest.mark.skipif(not can_prepack(nn.Linear(2, 2)), reason="torch built without oneDNN")


@pytest.mark.parametrize("lora", [False, True])
def test_a_forward_inside_gives_the_plain_logits_and_the_model_is_restored(lora):
    from prefdyn.policies.lm import apply_lora

    model = tiny_llama()
    if lora:
        model = apply_lora(model, seed=0)
        for name, p in model.named_parameters():  # LoRA's B starts at 0: make the adapter count
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.1)
    model.eval()  # LoRA's dropout off: both forwards deterministic
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    with torch.no_grad():
        want = model(input_ids=ids).logits
        with prepacked_linears(model, rows=3):
            layers = [m for m in model.modules() if type(m) is nn.Linear]
            assert layers and all("forward" in vars(m) for m in layers)  # every plain linear routed
            got = model(input_ids=ids).logits
        after = model(input_ids=ids).logits
    assert not any("forward" in vars(m) for m in model.modules())
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert torch.equal(after, want)


def test_the_model_is_restored_when_the_block_raises_and_autograd_is_refused():
    model = tiny_llama()
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    with pytest.raises(RuntimeError, match="for inference"):
        with prepacked_linears(model):
            model(input_ids=ids)  # autograd on and trainable weights: no silent zero gradient
    assert not any("forward" in vars(m) for m in model.modules())
    model(input_ids=ids).logits.sum().backward()  # the plain path trains again


def test_a_bf16_model_is_left_alone():
    model = tiny_llama().to(torch.bfloat16)
    with prepacked_linears(model):
        assert not any("forward" in vars(m) for m in model.modules())
