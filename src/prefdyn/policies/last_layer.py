"""The last-layer policy of Im & Li (ICML 2024, Sections 3-4).

The embeddings ``g(x)`` (inputs of ``lm_head``) are fixed; only the unembedding
``W_U`` is trained, so ``pi(y|x) = softmax(W_U g(x))_y``. ``B`` independent
problems (behaviors) are trained at once: the weights have shape ``(B, R, d)``
and every data tensor ``(B, N, ...)``, padded with a row mask.

``rows="answers"`` trains only the answer rows (R = 2). The other rows are
frozen, so their contribution to the log-partition is a per-example constant
``other_lse`` computed once: log-probabilities stay the true full-vocabulary ones
while the step costs two dot products per example. For DPO the partition
cancels and training all rows gives the same dynamics (tested).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace

import torch
from torch import Tensor, nn

from prefdyn.losses.types import PreferenceLogps
from prefdyn.policies._fused_last_layer import Objective, one_pass_logps, supports


@dataclass
class LastLayerData:
    """``B`` problems of ``N`` (padded) examples each.

    embeddings: (B, N, d) g(x); prefers_yes: (B, N) bool, the preferred answer is
    row ``yes``; mask: (B, N) bool, real rows; groups: (B, N) long, sub-group
    (behavior) of each row inside a mixture; other_lse: (B, N) logsumexp of the
    frozen non-answer logits, or None to normalize over the answer rows only;
    ref_chosen / ref_rejected: (B, N) reference log-probs of the preferred and
    dispreferred answers, filled by :meth:`with_reference`.
    """

    embeddings: Tensor
    prefers_yes: Tensor
    mask: Tensor
    groups: Tensor
    other_lse: Tensor | None = None
    ref_chosen: Tensor | None = None
    ref_rejected: Tensor | None = None

    @property
    def n_problems(self) -> int:
        return self.embeddings.shape[0]

    def take(self, idx: Tensor) -> "LastLayerData":
        """Rows ``idx`` (B, k) of every problem."""
        def pick(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if t.dim() == 3:
                return torch.gather(t, 1, idx[..., None].expand(-1, -1, t.shape[-1]))
            return torch.gather(t, 1, idx)
        return LastLayerData(**{f.name: pick(getattr(self, f.name)) for f in fields(self)})

    def with_reference(self, ref_yes: Tensor, ref_no: Tensor) -> "LastLayerData":
        """Store the reference log-probs of the preferred and dispreferred answers."""
        y = self.prefers_yes
        return replace(self, ref_chosen=torch.where(y, ref_yes, ref_no).detach(),
                       ref_rejected=torch.where(y, ref_no, ref_yes).detach())


def stack_problems(embeddings: list[Tensor], prefers_yes: list[Tensor],
                   groups: list[Tensor] | None = None,
                   other_lse: list[Tensor] | None = None) -> LastLayerData:
    """Pad a list of per-problem tensors ((n_b, d), (n_b,)) into one :class:`LastLayerData`."""
    B = len(embeddings)
    n_max = max(e.shape[0] for e in embeddings)
    d = embeddings[0].shape[1]
    G = embeddings[0].new_zeros(B, n_max, d)
    y = torch.zeros(B, n_max, dtype=torch.bool)
    mask = torch.zeros(B, n_max, dtype=torch.bool)
    grp = torch.zeros(B, n_max, dtype=torch.long)
    lse = None if other_lse is None else embeddings[0].new_full((B, n_max), -torch.inf)
    for b, (e, p) in enumerate(zip(embeddings, prefers_yes)):
        n = e.shape[0]
        G[b, :n], y[b, :n], mask[b, :n] = e, p.bool(), True
        if groups is not None:
            grp[b, :n] = groups[b]
        if lse is not None:
            lse[b, :n] = other_lse[b]
    return LastLayerData(G, y, mask, grp, lse)


class _FixedInputLinear(torch.autograd.Function):
    """logits = G @ W^T per problem, (B, N, d) x (B, R, d) -> (B, N, R).

    The embeddings never need a gradient, and autograd's default backward for a
    batched matmul reads G transposed, 2-4x slower on CPU than the contiguous
    product dlogits^T @ G used here (the step is memory-bound on reading G).
    """

    @staticmethod
    def forward(ctx, G: Tensor, W: Tensor) -> Tensor:
        ctx.save_for_backward(G)
        return torch.bmm(G, W.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad_logits: Tensor):
        (G,) = ctx.saved_tensors
        return None, torch.bmm(grad_logits.transpose(1, 2), G)


class LastLayerPolicy(nn.Module):
    """Trainable unembedding rows ``W: (B, R, d)`` with their start ``W0`` kept as a buffer.

    ``yes`` / ``no`` are the row indices of the two answers in ``W`` (0 and 1 for
    ``rows="answers"``, the token ids for ``rows="all"``). With ``one_pass`` set to the
    step's objective, a two-row policy computes the weight gradient in the same pass
    over the embeddings as the log-probs (:mod:`prefdyn.policies._fused_last_layer`) when
    the objective is a margin loss (dpo, ipo, hinge) on fp32 CPU tensors; otherwise it
    takes the plain path.
    """

    one_pass: Objective | None = None

    def __init__(self, W_init: Tensor, n_problems: int, *, yes: int = 0, no: int = 1):
        super().__init__()
        W_init = W_init.detach().float()
        if W_init.dim() == 2:
            W_init = W_init.expand(n_problems, *W_init.shape)
        self.W = nn.Parameter(W_init.clone())
        self.register_buffer("W0", W_init.clone())
        self.yes, self.no = yes, no

    def _log_partition(self, logits: Tensor, data: LastLayerData) -> Tensor:
        if logits.shape[-1] == 2:  # an elementwise op is much cheaper than a size-2 reduction
            lse = torch.logaddexp(logits[..., 0], logits[..., 1])
        else:
            lse = torch.logsumexp(logits, dim=-1)
        if data.other_lse is not None:
            lse = torch.logaddexp(lse, data.other_lse)
        return lse

    def answer_logps(self, data: LastLayerData) -> tuple[Tensor, Tensor]:
        """log pi(yes|x), log pi(no|x): two (B, N) tensors."""
        logits = _FixedInputLinear.apply(data.embeddings, self.W)
        lse = self._log_partition(logits, data)
        return logits[..., self.yes] - lse, logits[..., self.no] - lse

    def logps(self, data: LastLayerData) -> PreferenceLogps:
        """Chosen/rejected log-probs of the batch against its stored reference."""
        if (self.one_pass is not None and self.W.shape[1] == 2 and torch.is_grad_enabled()
                and supports(self.one_pass, self.W, data.embeddings)):
            return one_pass_logps(self.W, data.embeddings, data.prefers_yes, data.mask, data.other_lse,
                                  data.ref_chosen, data.ref_rejected, rows=(self.yes, self.no),
                                  objective=self.one_pass)
        logits = _FixedInputLinear.apply(data.embeddings, self.W)
        lse = self._log_partition(logits, data)
        rows = torch.where(data.prefers_yes[..., None],
                           logits.new_tensor([self.yes, self.no], dtype=torch.long),
                           logits.new_tensor([self.no, self.yes], dtype=torch.long))
        pair = logits.gather(-1, rows) - lse[..., None]
        return PreferenceLogps(chosen=pair[..., 0], rejected=pair[..., 1],
                               ref_chosen=data.ref_chosen, ref_rejected=data.ref_rejected)

    @contextlib.contextmanager
    def twice_differentiable(self):
        """The plain path inside the block: the one-read path's backward is not itself
        differentiable, and Hessian-vector products need a double backward."""
        one_pass, self.one_pass = self.one_pass, None
        try:
            yield self
        finally:
            self.one_pass = one_pass

    @torch.no_grad()
    def reference_for(self, data: LastLayerData) -> LastLayerData:
        """``data`` with the log-probs of the current weights stored as its reference."""
        yes, no = self.answer_logps(data)
        return data.with_reference(yes, no)

    @torch.no_grad()
    def delta(self) -> Tensor:
        """W(t) - W(0): (B, R, d)."""
        return self.W - self.W0

    @torch.no_grad()
    def boundary_delta(self) -> Tensor:
        """Change of the decision direction u = dW[yes] - dW[no]: (B, d).

        The DPO reward margin of an example is ``beta * s * <u, g>`` (s = +-1 by label),
        so u is the normal of the learned decision boundary (Theorem 4.2's object).
        """
        dW = self.delta()
        return dW[:, self.yes] - dW[:, self.no]
