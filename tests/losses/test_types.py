"""The containers' generic operations the one step relies on (concatenation, detach)."""

from dataclasses import dataclass

import pytest
import torch
from torch import Tensor

from prefdyn.losses import LossOutput, PreferenceLogps
from prefdyn.losses.types import cat_examples, detach_fields, per_token_field


@dataclass
class _Tokens:
    logps: Tensor = per_token_field()  # (n, T)
    rewards: Tensor | None = None      # (n,)
    group_size: int = 2


def test_cat_examples_pads_per_token_fields_and_keeps_plain_values():
    a = _Tokens(torch.tensor([[1.0, 2.0]]), torch.tensor([5.0]))
    b = _Tokens(torch.tensor([[3.0, 4.0, 6.0], [7.0, 8.0, 9.0]]), torch.tensor([1.0, 2.0]))
    c = cat_examples([a, b])
    assert c.logps.tolist() == [[1.0, 2.0, 0.0], [3.0, 4.0, 6.0], [7.0, 8.0, 9.0]]
    assert c.rewards.tolist() == [5.0, 1.0, 2.0]
    assert c.group_size == 2
    with pytest.raises(ValueError, match="group_size"):
        cat_examples([a, _Tokens(b.logps, b.rewards, group_size=3)])
    with pytest.raises(ValueError, match="rewards"):
        cat_examples([a, _Tokens(b.logps, None)])


def test_cat_examples_of_loss_outputs_concatenates_every_metric_on_the_last_dim():
    a = LossOutput(torch.zeros(2, 1), {"r": torch.ones(2, 1)})
    b = LossOutput(torch.ones(2, 3), {"r": torch.zeros(2, 3)})
    c = cat_examples([a, b])
    assert c.losses.shape == (2, 4) and c.metrics["r"].tolist() == [[1, 0, 0, 0]] * 2


def test_detach_reaches_tensors_in_dict_fields():
    x = torch.ones(2, requires_grad=True)
    out = LossOutput(x * 2, {"m": x * 3}).detach()
    assert not out.losses.requires_grad and not out.metrics["m"].requires_grad
    lp = detach_fields(PreferenceLogps(x, x, x, x))
    assert not lp.chosen.requires_grad and lp.chosen_len is None
