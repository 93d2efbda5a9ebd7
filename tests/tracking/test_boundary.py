"""BoundaryRecorder keeps the boundary normal at the start, every k steps and the last."""

import torch

from prefdyn.policies import stack_problems
from prefdyn.theory import cosines, two_class_law
from prefdyn.tracking.boundary import BoundaryRecorder
from prefdyn.training import TrainConfig, fit_last_layer


def test_boundary_recorder_keeps_start_every_k_and_last():
    gen = torch.Generator().manual_seed(0)
    g, y = two_class_law(8, 0.5, generator=gen).sample(40, generator=gen)
    rec = BoundaryRecorder(every=3)
    run = fit_last_layer(torch.zeros(2, 8), stack_problems([g.float()], [y]), TrainConfig(steps=7, lr=0.5),
                         names=["a"], callbacks=[rec])
    steps, directions = rec.stacked()
    assert steps.tolist() == [0, 3, 6, 7] and directions.shape == (1, 4, 8)
    assert torch.allclose(directions[0, -1], run.policy.boundary_delta()[0].double())
    assert cosines(directions[0], torch.ones(8))[0] == 0.0
