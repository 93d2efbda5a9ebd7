"""The last-layer step over ``G`` in one read, as one compiled CPU loop (numba).

For a loss that depends on the pair only through its margin
``h = (log pi(y+) - log pi_ref(y+)) - (log pi(y-) - log pi_ref(y-))``, the gradient
of a statement's logits is known as soon as its two logits are: with
``log pi(a) = l_a - lse`` the ``lse`` cancels in ``h``, so ``dL/dl_{y+} = w L'(h)``
and ``dL/dl_{y-} = -w L'(h)`` (``w`` the row's weight in the step's masked mean).
Each embedding row ``x`` is therefore read once: its two dot products, its log-probs,
``L'(h)`` and its contribution ``L'(h) w x`` to the weight gradient are all computed
while ``x`` is in L1. Torch has no single op for this (a forward product, an
elementwise function of its result, and a product reduced over the other axis), so
a library path reads ``G`` twice per step; see ``benchmarks/bench_last_layer_blocks.py``.

``L'(h)`` is written here for the three margin losses of :mod:`prefdyn.losses.preference`
(their formulas are quoted below); any other objective is not handled here. The
gradient predicted here is still checked against autograd's by the caller
(:mod:`prefdyn.policies._fused_last_layer`), so a mismatch costs a second read of
``G``, never a wrong gradient.

Numerics: everything a row needs is computed in fp32, as the autograd path computes
it (the dot products as the BLAS product does, ``logaddexp`` in torch's form); the
weight gradient accumulates in fp32 over 32 rows, then in fp64 across those blocks.
Only reassociation and contraction are allowed (no fast-math NaN assumptions), so NaN
embeddings still give NaN log-probs. Parallel over problems (numba's threads, as many
as torch uses).
"""

from __future__ import annotations

import functools
import inspect
import threading

import numpy as np
import torch
from torch import Tensor

from prefdyn.losses.preference import dpo_loss, hinge_loss, ipo_loss

DPO, IPO, HINGE = 0, 1, 2
_KINDS = {dpo_loss: DPO, ipo_loss: IPO, hinge_loss: HINGE}
"""``L'(h)`` of each margin loss, ``beta`` its parameter:
- dpo ``-log sigmoid(beta h)``: ``-beta / (1 + exp(beta h))``;
- ipo ``(h - 1/(2 beta))^2``: ``2 (h - 1/(2 beta))``;
- hinge ``max(0, 1 - beta h)``: ``-beta`` where ``1 - beta h > 0``, else 0 (torch's
  relu has gradient 0 at 0)."""

_ROWS_PER_FP32_BLOCK = 32


def margin_loss(objective) -> tuple[int, float] | None:
    """``(kind, beta)`` when ``objective`` is a margin loss this kernel knows (as bound
    by :func:`prefdyn.losses.get_loss`), else None."""
    fn = getattr(objective, "func", None)
    if fn not in _KINDS or getattr(objective, "args", ()):
        return None
    kwargs = dict(objective.keywords)
    beta = kwargs.pop("beta", inspect.signature(fn).parameters["beta"].default)
    return None if kwargs else (_KINDS[fn], float(beta))


def supports(objective, W: Tensor, G: Tensor) -> bool:
    """Whether :func:`one_read_step` computes this step: a known margin loss and fp32
    CPU tensors."""
    return (margin_loss(objective) is not None and G.device.type == "cpu" and W.device.type == "cpu"
            and G.dtype == torch.float32 and W.dtype == torch.float32)


@functools.cache
def _compiled():
    try:
        import numba
    except ImportError as err:  # a core dependency; only a broken install gets here
        raise ImportError("prefdyn's one-read last-layer step needs numba: pip install numba") from err
    fastmath = {"reassoc", "contract"}
    block = _ROWS_PER_FP32_BLOCK

    @numba.njit(parallel=True, fastmath=fastmath, cache=True)
    def kernel(G, W_pair, prefers_yes, weight, other_lse, has_other, ref_chosen, ref_rejected,
               kind, beta, chosen, rejected, g_chosen, grad_yes):
        B, N, d = G.shape
        for b in numba.prange(B):
            w_yes, w_no = W_pair[b, 0], W_pair[b, 1]
            one = np.float32(1.0)
            total = np.zeros(d, np.float64)
            partial = np.zeros(d, np.float32)
            for n0 in range(0, N, block):
                partial[:] = 0.0
                for n in range(n0, min(N, n0 + block)):
                    x = G[b, n]
                    l_yes = np.float32(0.0)
                    l_no = np.float32(0.0)
                    for j in range(d):
                        l_yes += w_yes[j] * x[j]
                        l_no += w_no[j] * x[j]
                    # logaddexp as torch computes it, in fp32
                    lse = max(l_yes, l_no) + np.log1p(np.exp(-abs(l_yes - l_no)))
                    if has_other:
                        o = other_lse[b, n]
                        lse = max(lse, o) + np.log1p(np.exp(-abs(lse - o)))
                    lp_yes, lp_no = l_yes - lse, l_no - lse
                    if prefers_yes[b, n]:
                        lp_c, lp_r = lp_yes, lp_no
                    else:
                        lp_c, lp_r = lp_no, lp_yes
                    h = (lp_c - ref_chosen[b, n]) - (lp_r - ref_rejected[b, n])
                    if kind == 0:
                        dh = -beta / (one + np.exp(beta * h))
                    elif kind == 1:
                        dh = np.float32(2.0) * (h - one / (np.float32(2.0) * beta))
                    else:
                        dh = -beta if one - beta * h > 0 else np.float32(0.0)
                    g = weight[b, n] * dh
                    chosen[b, n] = lp_c
                    rejected[b, n] = lp_r
                    g_chosen[b, n] = g
                    g_yes = g if prefers_yes[b, n] else -g
                    if g_yes != 0.0:
                        for j in range(d):
                            partial[j] += g_yes * x[j]
                for j in range(d):
                    total[j] += partial[j]
            for j in range(d):
                grad_yes[b, j] = total[j]

    return numba, kernel


_lock = threading.Lock()  # numba's fallback threading layer (workqueue) is not thread-safe


def one_read_step(objective, W_pair: Tensor, G: Tensor, prefers_yes: Tensor, weight: Tensor,
                  other_lse: Tensor | None, ref_chosen: Tensor, ref_rejected: Tensor
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One read of ``G: (B, N, d)``: ``(chosen, rejected, g_chosen, grad_pair)``.

    ``chosen``/``rejected``: (B, N) log-probs; ``g_chosen``: (B, N) the gradient of
    ``sum_b sum_n weight * L`` with respect to the chosen log-prob (the rejected one's
    is its negative); ``grad_pair``: (B, 2, d) its gradient with respect to
    ``W_pair`` (rows yes, no).
    """
    kind, beta = margin_loss(objective)
    numba, kernel = _compiled()
    B, N, d = G.shape
    G = G.detach().contiguous()
    chosen, rejected, g_chosen = (G.new_empty(B, N) for _ in range(3))
    grad_yes = G.new_empty(B, d)
    has_other = other_lse is not None
    other = (other_lse if has_other else ref_chosen).detach().float().contiguous()

    def arr(t: Tensor, dtype=torch.float32) -> np.ndarray:
        return t.detach().to(dtype).contiguous().numpy()

    with _lock:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        kernel(G.numpy(), arr(W_pair), arr(prefers_yes, torch.bool), arr(weight), other.numpy(), has_other,
               arr(ref_chosen), arr(ref_rejected), kind, np.float32(beta),
               chosen.numpy(), rejected.numpy(), g_chosen.numpy(), grad_yes.numpy())
    return chosen, rejected, g_chosen, torch.stack((grad_yes, -grad_yes), dim=1)
