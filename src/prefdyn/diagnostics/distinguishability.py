"""Preference distinguishability of one behavior (Im & Li, ICML 2024, Section 3).

A behavior's preference data set is a set of prompts ``x`` whose preferred
single-token answer is Yes (the positive class, ``+``) or No (``-``). With
``g(x)`` the last hidden state at the last prompt position (the input of the
unembedding ``W_U``), the paper measures how well the two classes are told
apart by

* the distinguishability ``D = ||mu+ - mu-||`` and
* its exponent ``Delta = log D / log d`` (so ``D = d**Delta``), with ``d`` the
  embedding width; Theorem 4.1 bounds the DPO update rate by ``d**(Delta - 1/2)``.

:func:`behavior_stats` also reports how the within-class spread compares to
``D`` (the paper's sub-exponential concentration assumption), because ``D``
alone does not say whether the classes overlap.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

import torch
from torch import Tensor

from prefdyn.errors import DataError

__all__ = ["BehaviorStats", "behavior_stats", "check_embeddings", "class_means"]


@dataclass(frozen=True)
class BehaviorStats:
    """Class statistics of one behavior's last hidden states, in float64.

    Counts are ints, everything else a Python float; ``b`` is the only tensor.
    ``Sigma`` is the pooled within-class covariance (see :func:`behavior_stats`).

    Attributes:
        n, n_pos, n_neg: samples in all, preferring Yes (+), preferring No (-).
        d: embedding width.
        D: distinguishability ``||mu+ - mu-||`` (Section 3).
        Delta: ``log D / log d`` (``-inf`` when ``D == 0``).
        scale_free_D: ``D / sqrt(trace Sigma)``, a signal-to-noise ratio that
            does not change when all hidden states are rescaled.
        trace_ratio: ``trace(Sigma) / D**2``, total within-class spread.
        op_ratio: ``||Sigma||_2 / D**2``, spread along the noisiest direction.
        along_ratio: ``v^T Sigma v / D**2`` with ``v = b / D``: spread along the
            discriminating direction itself; above ~0.25 (a standard deviation
            beyond ``D / 2``) the classes overlap heavily.
        separable_share: share of samples on their own class's side of the
            midpoint hyperplane normal to ``b`` (in-sample, so optimistic when
            ``n`` is not much larger than ``d``; 0.5 is chance).
        mean_norm: norm of the overall mean of all hidden states; large in real
            models, where every hidden state shares a common direction.
        D_debiased: ``sqrt(max(D**2 - trace(Sigma) (1/n_pos + 1/n_neg), 0))``.
            Sampling noise inflates ``E[D**2]`` by ``trace(Sigma) (1/n_pos + 1/n_neg)``,
            which is large when ``n`` is small next to ``d``: with random labels
            ``D`` is far from 0 but ``D_debiased`` is about 0.
        b: ``mu+ - mu-``, shape ``(d,)``, float64; left out of :meth:`to_dict`.
    """

    n: int
    n_pos: int
    n_neg: int
    d: int
    D: float
    Delta: float
    scale_free_D: float
    trace_ratio: float
    op_ratio: float
    along_ratio: float
    separable_share: float
    mean_norm: float
    D_debiased: float
    b: Tensor = field(repr=False, compare=False)

    def to_dict(self) -> dict[str, int | float]:
        """The scalar fields, JSON-ready (``b`` is left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "b"}


def check_embeddings(embeddings: Tensor, prefers_yes: Tensor, *, what: str = "embeddings") -> None:
    """Raise :class:`DataError` unless ``embeddings (n, d)`` and ``prefers_yes (n,)`` fit.

    Each class needs at least two samples: one sample has no within-class spread
    and the pooled covariance's ``n - 2`` denominator would be meaningless.
    """
    if embeddings.ndim != 2:
        raise DataError(f"expected embeddings of shape (n, d), got {tuple(embeddings.shape)}", source=what)
    if embeddings.shape[1] < 2:
        # Delta = log D / log d is undefined for d = 1.
        raise DataError(f"embedding width must be at least 2, got {embeddings.shape[1]}", source=what)
    if prefers_yes.ndim != 1 or prefers_yes.shape[0] != embeddings.shape[0]:
        raise DataError(
            f"prefers_yes must have shape ({embeddings.shape[0]},), got {tuple(prefers_yes.shape)}",
            source=what,
        )
    if prefers_yes.dtype != torch.bool:
        raise DataError(f"prefers_yes must be a bool tensor, got {prefers_yes.dtype}", source=what)
    if not torch.isfinite(embeddings).all():
        raise DataError("embeddings contain NaN or inf", source=what)
    n_pos = int(prefers_yes.sum())
    n_neg = prefers_yes.shape[0] - n_pos
    for label, count in (("Yes", n_pos), ("No", n_neg)):
        if count < 2:
            raise DataError(
                f"{count} sample(s) prefer {label}; each class needs at least 2 to estimate its spread",
                source=what,
            )


def class_means(embeddings: Tensor, prefers_yes: Tensor) -> tuple[Tensor, Tensor]:
    """``(mu+, mu-)``, each ``(d,)`` float64; inputs as in :func:`check_embeddings`."""
    g = embeddings.to(torch.float64)
    return g[prefers_yes].mean(0), g[~prefers_yes].mean(0)


_DENSE_EIG_MAX = 256
"""Gram matrices up to this size use a dense ``eigvalsh``; larger ones LOBPCG."""


def _top_scatter_eigenvalue(centered: Tensor) -> float:
    """Largest eigenvalue of ``X^T X`` for ``X`` ``(n, d)``, from the smaller Gram matrix.

    ``X X^T`` and ``X^T X`` share their non-zero spectrum. For real sizes
    (``n=1000, d=4096``) LOBPCG on the Gram matrix takes 0.1-2 s (faster the
    more one direction dominates, as in real hidden states) where an SVD of
    ``X`` takes ~15 s on two cores. It starts from a fixed vector so that the
    global RNG is never touched.
    """
    n, d = centered.shape
    gram = centered @ centered.T if n <= d else centered.T @ centered
    diag = gram.diagonal()
    if gram.shape[0] <= _DENSE_EIG_MAX or not diag.max() > 0:
        return float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0))
    start = gram[:, diag.argmax()].unsqueeze(1)
    top, _ = torch.lobpcg(gram, k=1, X=start, largest=True, tol=1e-10)
    return float(top.clamp_min(0))


def _ratio(num: float, den: float) -> float:
    # Identical class means (D == 0) make every "per D**2" ratio infinite, not an error.
    if den > 0:
        return num / den
    return math.inf if num > 0 else math.nan


def behavior_stats(embeddings: Tensor, prefers_yes: Tensor) -> BehaviorStats:
    """Distinguishability and class geometry of one behavior (Im & Li 2024, Section 3).

    Args:
        embeddings: ``(n, d)`` last hidden states ``g(x)``, any float dtype.
        prefers_yes: ``(n,)`` bool, True where the preferred answer is Yes (+).

    ``Sigma`` is the pooled within-class covariance: each class is centered on
    its own mean and the scatter of both classes is summed (so each class
    counts by its size) and divided by ``n - 2``, the unbiased denominator for
    two estimated means. It is never formed as a ``(d, d)`` matrix when
    ``n < d``: with the centered data ``X`` ``(n, d)``,
    ``trace Sigma = ||X||_F^2 / (n-2)`` and ``||Sigma||_2 = lambda_max(X X^T) / (n-2)``.

    Raises:
        DataError: wrong shapes, ``d < 2``, a non-bool label, NaN/inf, or a class with
            fewer than two samples.
    """
    check_embeddings(embeddings, prefers_yes)
    g = embeddings.to(torch.float64)
    n, d = g.shape
    n_pos = int(prefers_yes.sum())
    mu_pos, mu_neg = class_means(g, prefers_yes)
    b = mu_pos - mu_neg
    D = float(b.norm())

    centered = torch.where(prefers_yes[:, None], g - mu_pos, g - mu_neg)
    dof = n - 2
    trace_sigma = float(centered.square().sum()) / dof
    op_sigma = _top_scatter_eigenvalue(centered) / dof
    if D > 0:
        v = b / D
        along_sigma = float((centered @ v).square().sum()) / dof
        side = (g - (mu_pos + mu_neg) / 2) @ v
        # A sample exactly on the hyperplane counts as not separated.
        own_side = torch.where(prefers_yes, side > 0, side < 0)
        separable_share = float(own_side.double().mean())
    else:
        along_sigma, separable_share = math.nan, math.nan

    return BehaviorStats(
        n=n,
        n_pos=n_pos,
        n_neg=n - n_pos,
        d=d,
        D=D,
        Delta=math.log(D) / math.log(d) if D > 0 else -math.inf,
        scale_free_D=_ratio(D, math.sqrt(trace_sigma)),
        trace_ratio=_ratio(trace_sigma, D**2),
        op_ratio=_ratio(op_sigma, D**2),
        along_ratio=_ratio(along_sigma, D**2) if D > 0 else math.nan,
        separable_share=separable_share,
        mean_norm=float(g.mean(0).norm()),
        D_debiased=math.sqrt(max(D**2 - trace_sigma * (1 / n_pos + 1 / (n - n_pos)), 0.0)),
        b=b,
    )
