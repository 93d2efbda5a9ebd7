"""Training runs behind the theory experiments: the K-concept scaling law (Im & Li 2024b).

``K`` concepts are mixed into one preference data set of ``Q`` samples per cluster
and trained jointly with last-layer DPO, every ``(K, Q)`` cell as one problem of a
vectorized run, on synthetic concepts (:func:`concept_problems`) or real persona
behaviors (:func:`persona_problems`); :func:`run_margin_dynamics` trains them and
compares the steps to a target margin with the linear-regime prediction of
:func:`prefdyn.theory.scaling.linear_margin_rates`. The math is in
:mod:`prefdyn.theory.scaling`; this module runs training, so it sits above it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.policies.last_layer import LastLayerData, stack_problems
from prefdyn.theory.scaling import fit_exponent, linear_margin_rates, steps_to_margin
from prefdyn.theory.synthetic import ConceptLaw
from prefdyn.training import TrainConfig, fit_last_layer

__all__ = ["ScalingProblems", "ScalingRun", "concept_problems", "persona_problems",
           "run_margin_dynamics"]


@dataclass
class ScalingProblems:
    """All ``(K, Q)`` cells as problems of one vectorized run; ``groups`` = concept index."""

    names: list[str]
    Ks: list[int]
    Qs: list[int]
    train: LastLayerData
    test: LastLayerData
    concepts: list[str]


def _cell(K: int, Q: int) -> str:
    return f"K={K}, Q={Q}"


def concept_problems(law: ConceptLaw, Ks: Sequence[int], Qs: Sequence[int], *, n_test: int,
                     generator: torch.Generator) -> ScalingProblems:
    """Synthetic cells: the first ``K`` concepts of ``law``, ``Q`` training and ``n_test`` test
    samples per cluster. Data in float32, as the trainer uses it."""
    names, cells_K, cells_Q, train, test = [], [], [], [], []
    for K in Ks:
        sub = law.subset(K)
        for Q in Qs:
            train.append(sub.sample(Q, generator=generator))
            test.append(sub.sample(n_test, generator=generator))
            names.append(_cell(K, Q))
            cells_K.append(K)
            cells_Q.append(Q)

    def stack(parts):
        return stack_problems([p[0].float() for p in parts], [p[1] for p in parts],
                              groups=[p[2] for p in parts])

    return ScalingProblems(names, cells_K, cells_Q, stack(train), stack(test),
                           [f"concept {k}" for k in range(law.K)])


def persona_problems(ws, order: Sequence[int], Ks: Sequence[int], Qs: Sequence[int], *,
                     generator: torch.Generator) -> ScalingProblems:
    """Real cells: the behaviors ``order[:K]`` of a :class:`~prefdyn.experiments.Workspace` as
    concepts, ``Q`` training rows per (behavior, class) drawn from its train split, tested on
    the test split of the same behaviors (Im & Li 2024b mix subsets of 1-16 personas)."""
    picks = {}
    for i in order[:max(Ks)]:
        b = ws.behaviors[i]
        idx = b.train_idx[torch.randperm(len(b.train_idx), generator=generator)]
        picks[i] = (idx[b.prefers_yes[idx]], idx[~b.prefers_yes[idx]])
    q_avail = min(min(len(p), len(n)) for p, n in picks.values())
    if max(Qs) > q_avail:
        raise PrefdynError(f"Q = {max(Qs)} asked for, but a behavior has only {q_avail} training "
                           "rows of one class; lower --qs or use more data (--data, --n)")
    names, cells_K, cells_Q = [], [], []
    parts: dict[str, list[list]] = {"train": [], "test": []}
    for K in Ks:
        which = list(order[:K])
        for Q in Qs:
            tr = [torch.cat([picks[i][0][:Q], picks[i][1][:Q]]) for i in which]
            for split, rows in (("train", tr), ("test", [ws.behaviors[i].test_idx for i in which])):
                parts[split].append((
                    torch.cat([ws.embeddings[i][r] for i, r in zip(which, rows)]),
                    torch.cat([ws.behaviors[i].prefers_yes[r] for i, r in zip(which, rows)]),
                    torch.cat([torch.full((len(r),), k) for k, r in enumerate(rows)]),
                    torch.cat([ws.other_lse[i][r] for i, r in zip(which, rows)])))
            names.append(_cell(K, Q))
            cells_K.append(K)
            cells_Q.append(Q)

    def stack(ps):
        return stack_problems(*[[p[j] for p in ps] for j in range(3)], other_lse=[p[3] for p in ps])

    return ScalingProblems(names, cells_K, cells_Q, stack(parts["train"]), stack(parts["test"]),
                           [ws.names[i] for i in order[:max(Ks)]])


@dataclass
class ScalingRun:
    """Margins over steps and steps to ``target`` per ``(K, Q)`` cell.

    ``steps_train`` / ``steps_test``: measured steps to reach ``target`` (inf if never);
    ``predicted_train`` / ``predicted_test``: ``target / rate`` from :func:`linear_margin_rates`;
    ``exponent_test[Q]``: fitted slope of log(steps to the target test margin) on log K.
    """

    problems: ScalingProblems
    lr: float
    target: float
    steps: np.ndarray
    train_margin: dict[str, np.ndarray]
    test_steps: np.ndarray
    test_margin: dict[str, np.ndarray]
    steps_train: dict[str, float]
    steps_test: dict[str, float]
    predicted_train: dict[str, float]
    predicted_test: dict[str, float]
    exponent_test: dict[int, float]

    def table(self) -> list[dict]:
        p = self.problems
        return [{"K": K, "Q": Q, "final train margin": float(self.train_margin[n][-1]),
                 "final test margin": float(self.test_margin[n][-1]),
                 "steps to target (train)": self.steps_train[n],
                 "predicted (train)": self.predicted_train[n],
                 "steps to target (test)": self.steps_test[n],
                 "predicted (test)": self.predicted_test[n]}
                for n, K, Q in zip(p.names, p.Ks, p.Qs)]


def run_margin_dynamics(W_init: Tensor, problems: ScalingProblems, cfg: TrainConfig, *,
                        target: float | None = None, sink=None) -> ScalingRun:
    """Train every cell jointly on its mixture (one step size for all cells, so speeds compare)
    and measure the margins. ``target=None``: half the smallest final test margin among the cells
    with the largest ``Q`` (they generalize best), so that every such cell reaches it (margins rise
    about monotonically under full-batch DPO); cells with small ``Q`` may not (inf)."""
    run = fit_last_layer(W_init, problems.train, cfg, names=problems.names, test_data=problems.test,
                         sink=sink)
    steps, train_margin = run.history.curves("margin")
    test_steps, test_margin = run.history.curves("margin", split="test")
    if target is None:
        q_max = max(problems.Qs)
        finals = [float(test_margin[n][-1]) for n, q in zip(problems.names, problems.Qs) if q == q_max]
        target = 0.5 * min(finals)
        if not target > 0:
            raise PrefdynError(f"a cell with Q = {q_max} ends with a test margin <= 0 ({min(finals):.3g}); "
                               "train longer, raise the step size, or give a target margin")
    rate_train, rate_test = linear_margin_rates(problems.train, problems.test, beta=cfg.beta, lr=run.lr)
    names = problems.names
    steps_test = {n: steps_to_margin(test_steps, test_margin[n], target) for n in names}
    exponents = {}
    for Q in sorted(set(problems.Qs)):
        cells = [(K, n) for n, K, q in zip(names, problems.Ks, problems.Qs) if q == Q]
        exponents[Q] = fit_exponent([K for K, _ in cells], [steps_test[n] for _, n in cells])
    return ScalingRun(
        problems, run.lr, float(target), steps, train_margin, test_steps, test_margin,
        steps_train={n: steps_to_margin(steps, train_margin[n], target) for n in names},
        steps_test=steps_test,
        predicted_train={n: target / float(r) if r > 0 else float("inf") for n, r in zip(names, rate_train)},
        predicted_test={n: target / float(r) if r > 0 else float("inf") for n, r in zip(names, rate_test)},
        exponent_test=exponents)
