"""StartWeights: W(0) on disk, read back one tensor at a time."""

from __future__ import annotations

import pytest
import torch

from prefdyn._store import write_tensors
from prefdyn.training.start_weights import StartWeights
from tests._tiny import tiny_llama


def test_keeps_w0_after_the_model_changes_and_restores_it(tmp_path):
    model = tiny_llama()
    w0 = {n: p.detach().clone() for n, p in model.named_parameters()}
    start = StartWeights(model, tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    assert start.names == list(w0)
    for name in start.names:
        assert torch.equal(start.tensor(name), w0[name])
    fresh = start.load_into(tiny_llama(seed=1))
    for name, p in fresh.named_parameters():
        assert torch.equal(p, w0[name])


def test_file_is_private_and_removed_with_the_object(tmp_path):
    start = StartWeights(tiny_llama(), tmp_path)
    path = start.path
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file beside it
    del start
    assert not path.exists()


def test_a_file_changed_under_the_run_fails_loudly(tmp_path):
    model = tiny_llama()
    start = StartWeights(model, tmp_path)
    name = start.names[0]
    write_tensors(start.path, {name: torch.zeros(1)})
    with pytest.raises(ValueError, match=str(start.path.name)):
        start.tensor(name)
