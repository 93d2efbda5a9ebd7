"""The theory experiments' training runs (K-concept problems, margin dynamics) and the
experiments on a workspace."""

import math

import numpy as np
import pytest
import torch

from prefdyn.data import BehaviorData
from prefdyn.experiments._theory_runs import concept_problems, persona_problems, run_margin_dynamics
from prefdyn.experiments.theory import ScalingConfig, run_scaling_law, run_theorems_on_embeddings
from prefdyn.experiments.workspace import Workspace
from prefdyn.theory import concept_law, linear_margin_rates, paper_quantities, two_class_law
from prefdyn.training import TrainConfig, fit_last_layer


def test_concept_problems_and_first_step_margin_rate():
    gen = torch.Generator().manual_seed(0)
    law = concept_law(4, 16, generator=gen)
    problems = concept_problems(law, [1, 4], [3, 5], n_test=7, generator=gen)
    assert problems.names == ["K=1, Q=3", "K=1, Q=5", "K=4, Q=3", "K=4, Q=5"]
    assert problems.train.mask.sum(1).tolist() == [6, 10, 24, 40]
    assert problems.test.mask.sum(1).tolist() == [14, 14, 56, 56]
    cfg = TrainConfig(steps=1, lr=0.3, beta=0.5)
    run = fit_last_layer(torch.zeros(2, 16), problems.train, cfg, names=problems.names, test_data=problems.test)
    rate_train, rate_test = linear_margin_rates(problems.train, problems.test, beta=0.5, lr=0.3)
    measured = run.history.last("margin")
    measured_test = run.history.last("margin", split="test")
    # Exact for the first step (A.3 with the mixture as one behavior), up to float32.
    assert [measured[n] for n in problems.names] == pytest.approx(rate_train.tolist(), rel=1e-4)
    assert [measured_test[n] for n in problems.names] == pytest.approx(rate_test.tolist(), rel=1e-4, abs=1e-6)


def test_more_concepts_need_more_steps():
    gen = torch.Generator().manual_seed(0)
    law = concept_law(8, 32, generator=gen)
    problems = concept_problems(law, [1, 2, 4, 8], [32], n_test=32, generator=gen)
    sr = run_margin_dynamics(torch.zeros(2, 32), problems,
                             TrainConfig(steps=120, lr_safety=0.1, log_every=1, eval_every=1))
    steps = [sr.steps_test[n] for n in problems.names]
    assert all(np.isfinite(steps)) and steps == sorted(steps)
    assert 0.6 < sr.exponent_test[32] < 1.6
    assert sr.target == pytest.approx(0.5 * min(v[-1] for v in sr.test_margin.values()))


def test_default_target_needs_a_positive_test_margin():
    gen = torch.Generator().manual_seed(0)
    problems = concept_problems(concept_law(2, 16, generator=gen), [1, 2], [8], n_test=8, generator=gen)
    problems.test.prefers_yes = ~problems.test.prefers_yes  # test labels flipped: test margins fall below 0
    with pytest.raises(Exception, match="test margin <= 0"):
        run_margin_dynamics(torch.zeros(2, 16), problems, TrainConfig(steps=10, lr_safety=0.5))
    # An explicit target is taken as given.
    sr = run_margin_dynamics(torch.zeros(2, 16), problems, TrainConfig(steps=10, lr_safety=0.5), target=0.1)
    assert sr.target == 0.1 and all(v == math.inf for v in sr.steps_test.values())


def _fake_workspace(n_behaviors=3, n=40, d=12, seed=0) -> Workspace:
    """A Workspace without a model: synthetic hidden states with a large common mean, like real ones."""
    gen = torch.Generator().manual_seed(seed)
    behaviors, embeddings = [], []
    for k in range(n_behaviors):
        law = two_class_law(d, 0.6, common_mean=5.0, generator=gen)
        g, y = law.sample(n, generator=gen)
        perm = torch.randperm(n, generator=gen)
        g, y = g[perm].float(), y[perm]
        embeddings.append(g)
        behaviors.append(BehaviorData(f"b{k}", [""] * n, [""] * n, y, torch.arange(n - 10), torch.arange(n - 10, n),
                                      [""] * n))
    return Workspace("fake", "0" * 16, behaviors, embeddings, [torch.zeros(n) for _ in range(n_behaviors)],
                     torch.zeros(2, d), [0, 1])


def test_persona_problems_from_a_workspace():
    ws = _fake_workspace()
    problems = persona_problems(ws, [2, 0, 1], [1, 3], [2, 4], generator=torch.Generator().manual_seed(0))
    assert problems.concepts == ["b2", "b0", "b1"]
    assert problems.train.mask.sum(1).tolist() == [4, 8, 12, 24]
    assert problems.test.mask.sum(1).tolist() == [10, 10, 30, 30]
    for b in range(4):
        rows = problems.train.mask[b]
        assert int(problems.train.prefers_yes[b][rows].sum()) * 2 == int(rows.sum())  # Q of each class
    with pytest.raises(Exception, match="Q = 100"):
        persona_problems(ws, [0, 1, 2], [1], [100], generator=torch.Generator())


def test_scaling_experiment_on_a_workspace():
    res = run_scaling_law(ScalingConfig(ks=(1, 2, 3, 16), qs=(4, 8)), TrainConfig(steps=20, eval_every=1),
                          ws=_fake_workspace())
    assert res.summary["Ks"] == [1, 2, 3] and res.summary["Qs"] == [4, 8]
    assert {"within", "between", "within_centered", "between_centered"} == set(res.summary["cluster_structure"])
    assert len(res.tables[0][1]) == 6 and res.figures


def test_theorem_checks_on_a_workspace():
    ws = _fake_workspace()
    res = run_theorems_on_embeddings(ws, TrainConfig(steps=15, lr_safety=0.1, log_every=1, eval_every=5))
    s = res.summary
    assert s["a3_max_abs_error"] < 1e-12 and s["a3_trainer_relative_error"] < 1e-4
    assert s["assumption_share"]["centered"] == 0.0  # the common mean of norm 5 >> D
    assert set(s["share_holds"]) == {"4.1", "4.2", "4.3"}
    assert len(s["per_behavior"]) == 3
    # The paper's quantities per behavior, checked against theory.paper_quantities on the training rows.
    table = dict(res.tables)["The paper's quantities (Theorems 4.1-4.3) per behavior"]
    assert [r["behavior"] for r in table] == ws.names
    G = ws.embeddings[0][ws.rows(0, "train")]
    y = ws.behaviors[0].prefers_yes[ws.rows(0, "train")]
    q = paper_quantities(G, y, ws.W_answers[0], ws.W_answers[1], beta=0.1, lr=res.summary["lr"])
    assert table[0]["c_n (Tr(Sigma)^1/2)"] == pytest.approx(q["theorem41"]["c_n"])
    assert table[0]["beta'^2 eta c_n^2"] == pytest.approx(q["theorem41"]["step_product"])
    assert table[0]["<= 1/4"] == (table[0]["beta'^2 eta c_n^2"] <= 0.25)
    assert table[0]["v-range empty"] == q["setting"]["v_range_empty"]
    assert table[0]["c_n (Tr(Sigma^1/2))"] >= table[0]["c_n (Tr(Sigma)^1/2)"]  # sum sqrt(l) >= sqrt(sum l)
    assert sum(s["theorem41_verdicts"].values()) == 3
    assert "centering" not in res.explanation
