"""The scaling law of DPO with K concepts (Im & Li 2024b, "Can DPO Learn Diverse Human
Values? A Theoretical Scaling Law").

``K`` concepts (values, behaviors) are mixed into one preference data set of ``Q``
samples per cluster (each concept a preferred and a non-preferred cluster) and
trained jointly with last-layer DPO. We track the train and test reward margins
over steps and the steps needed to reach a target margin, for several ``K`` and
``Q``, on synthetic concepts (:func:`concept_problems`) or real persona behaviors
(:func:`persona_problems`), all ``(K, Q)`` cells in one vectorized run.

The linear-regime prediction (:func:`linear_margin_rates`, exact for the first
step, Appendix A.3 of Im & Li ICML 2024): the mean train reward margin grows by
``eta beta^2 ||m||^2`` per step and the test margin by ``eta beta^2 <m, m_test>``,
``m = (1/n) sum_i s_i g_i``. With ``K`` orthogonal concepts of equal ``D``,
``m ~ (1/K) sum_k b_k / 2 + noise``, so the test margin's rate falls like ``1/K``
(``(1 + (K-1) rho) / K`` with concept correlation ``rho``): the steps to a target
test margin grow about linearly in ``K``, while the train margin's extra
``tr(Sigma) / n`` (memorized noise, ``n = 2KQ``) shrinks as ``Q`` grows.

:func:`cluster_structure` checks the premise on real data: hidden states of one
behavior are closer to each other than to other behaviors' once the global mean
(shared by all hidden states) is subtracted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from prefdyn.errors import PrefdynError
from prefdyn.theory.synthetic import ConceptLaw
from prefdyn.training import LastLayerData, TrainConfig, fit_last_layer, stack_problems

__all__ = ["ClusterStructure", "ScalingRun", "cluster_structure", "concept_problems", "fit_exponent",
           "linear_margin_rates", "persona_problems", "run_margin_dynamics", "steps_to_margin"]


def steps_to_margin(steps: np.ndarray, curve: np.ndarray, target: float) -> float:
    """First step at which ``curve >= target`` (``inf`` if never; NaNs skipped)."""
    hit = np.nonzero(np.nan_to_num(np.asarray(curve, dtype=float), nan=-np.inf) >= target)[0]
    return float(steps[hit[0]]) if len(hit) else float("inf")


def fit_exponent(x: Sequence[float], y: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` on ``log x`` over finite positive pairs (NaN if < 2)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y) & (x > 0) & (y > 0)
    if ok.sum() < 2 or np.ptp(np.log(x[ok])) == 0:
        return float("nan")
    return float(np.polyfit(np.log(x[ok]), np.log(y[ok]), 1)[0])


@dataclass(frozen=True, eq=False)
class ClusterStructure:
    """Mean cosine similarity of hidden states within and between behaviors.

    ``matrix[k, l]``: mean cosine over pairs (one of ``k``, one of ``l``; distinct samples on
    the diagonal); ``within`` averages the diagonal, ``between`` the off-diagonal.
    ``*_centered``: the same after subtracting the global mean of all hidden states.
    """

    names: list[str]
    matrix: Tensor
    matrix_centered: Tensor

    @staticmethod
    def _split(m: Tensor) -> tuple[float, float]:
        K = m.shape[0]
        off = m[~torch.eye(K, dtype=torch.bool)]
        return float(m.diagonal().mean()), float(off.mean()) if K > 1 else float("nan")

    @property
    def within(self) -> float:
        return self._split(self.matrix)[0]

    @property
    def between(self) -> float:
        return self._split(self.matrix)[1]

    @property
    def within_centered(self) -> float:
        return self._split(self.matrix_centered)[0]

    @property
    def between_centered(self) -> float:
        return self._split(self.matrix_centered)[1]

    def to_dict(self) -> dict[str, float]:
        return {"within": self.within, "between": self.between,
                "within_centered": self.within_centered, "between_centered": self.between_centered}


def _mean_cosine_matrix(xs: list[Tensor]) -> Tensor:
    # With unit rows and S_k the sum of behavior k's rows, the sum of all pairwise cosines
    # is <S_k, S_l>; the diagonal drops the n_k self-pairs. O(n d), no n x n matrix.
    units = [torch.nn.functional.normalize(x.double(), dim=1) for x in xs]
    sums = torch.stack([u.sum(0) for u in units])
    n = torch.tensor([u.shape[0] for u in units], dtype=torch.float64)
    m = sums @ sums.T / (n[:, None] * n[None, :])
    diag = (sums.square().sum(1) - n) / (n * (n - 1)).clamp_min(1)
    return m - torch.diag(m.diagonal()) + torch.diag(diag)


def cluster_structure(embeddings: list[Tensor], names: Sequence[str]) -> ClusterStructure:
    """Within- vs between-behavior mean cosine, raw and after removing the global mean.

    Args:
        embeddings: one ``(n_k, d)`` tensor per behavior (concept), ``n_k >= 2``.
        names: the behaviors' names.
    """
    if len(embeddings) != len(names) or any(e.shape[0] < 2 for e in embeddings):
        raise PrefdynError("cluster_structure needs one (n_k >= 2, d) tensor per name")
    global_mean = torch.cat([e.double() for e in embeddings]).mean(0)
    return ClusterStructure(list(names), _mean_cosine_matrix(embeddings),
                            _mean_cosine_matrix([e.double() - global_mean for e in embeddings]))


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


def _signed_means(data: LastLayerData) -> Tensor:
    """``m = (1/n) sum_i s_i g_i`` of each problem: ``(B, d)`` float64."""
    sign = (data.prefers_yes.double() * 2 - 1) * data.mask
    return torch.einsum("bn,bnd->bd", sign, data.embeddings.double()) / data.mask.sum(1, keepdim=True)


def linear_margin_rates(train: LastLayerData, test: LastLayerData, *, beta: float,
                        lr: float) -> tuple[Tensor, Tensor]:
    """Per-step growth of the mean train and test reward margins at ``W0``: ``(B,)`` each.

    Exact for the first step (Appendix A.3 with the whole mixture as one behavior):
    ``eta beta^2 ||m||^2`` and ``eta beta^2 <m, m_test>``; later steps are slower as the
    sigmoid weights of learned samples fall, so ``target / rate`` under-estimates the steps.
    """
    m, m_test = _signed_means(train), _signed_means(test)
    return lr * beta**2 * m.square().sum(1), lr * beta**2 * (m * m_test).sum(1)


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
