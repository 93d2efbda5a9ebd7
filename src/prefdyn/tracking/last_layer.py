"""Dynamics tracking for last-layer training (Im & Li 2024, Sections 3-4)."""

from __future__ import annotations

import torch
from torch import Tensor

from prefdyn.losses.types import compute_loss
from prefdyn.tracking.callbacks import Callback
from prefdyn.tracking.history import History
from prefdyn.tracking.preference import per_example_metrics, reduce_metrics


def class_mean_difference(data) -> Tensor:
    """mu+ - mu- of each problem's rows: (B, d)."""
    pos = (data.prefers_yes & data.mask).float()
    neg = (~data.prefers_yes & data.mask).float()
    mu_pos = torch.einsum("bn,bnd->bd", pos, data.embeddings) / pos.sum(1, keepdim=True).clamp_min(1)
    mu_neg = torch.einsum("bn,bnd->bd", neg, data.embeddings) / neg.sum(1, keepdim=True).clamp_min(1)
    return mu_pos - mu_neg


def operator_norm(M: Tensor) -> Tensor:
    """Spectral norm of each (R, d) matrix of a batch (B, R, d), from the smaller Gram
    matrix: an SVD per step would cost more than the training step itself."""
    gram = M @ M.transpose(-1, -2) if M.shape[-2] <= M.shape[-1] else M.transpose(-1, -2) @ M
    return torch.linalg.eigvalsh(gram.double())[..., -1].clamp_min(0).sqrt().to(M.dtype)


class LastLayerTracker(Callback):
    """Records, per problem (and per behavior inside a mixture), on train and test:
    loss, reward margin, reward and policy accuracy, chosen/rejected log-prob and
    their change, the share of chosen log-probs that fell; and per problem the
    weight change ||W(t) - W(0)|| (Frobenius and operator norm, Theorem 4.1's
    quantity), the gradient norm and the cosine between the learned boundary
    direction and mu+ - mu- (Theorem 4.2's quantity).
    """

    def __init__(self, objective, train, test=None, *, names: list[str],
                 group_names: list[str] | None = None, log_every: int = 1,
                 eval_every: int = 10, history: History | None = None,
                 full_batch: bool = True):
        self.objective, self.train, self.test = objective, train, test
        self.names, self.group_names = names, group_names or []
        self.log_every, self.eval_every = log_every, eval_every
        self.history = history if history is not None else History()
        self.full_batch = full_batch
        self._b = class_mean_difference(train)

    def _record(self, step: int, split: str, policy, data, out=None, logps=None) -> None:
        if out is None:
            with torch.no_grad():
                _, _, out, logps = compute_loss(policy, self.objective, data)
        values = per_example_metrics(out, logps)
        whole, by_group = reduce_metrics(values, data.mask, data.groups, len(self.group_names))
        whole = {k: v.tolist() for k, v in whole.items()}
        for b, name in enumerate(self.names):
            self.history.add({"step": step, "split": split, "problem": name, "group": None,
                              **{k: v[b] for k, v in whole.items()}})
        if by_group is not None:
            by_group = {k: v.tolist() for k, v in by_group.items()}
            for b, name in enumerate(self.names):
                for g, gname in enumerate(self.group_names):
                    self.history.add({"step": step, "split": split, "problem": name, "group": gname,
                                      **{k: v[b][g] for k, v in by_group.items()}})

    def _record_weights(self, step: int, policy, grad_norm: float | None) -> None:
        dW = policy.delta()
        fro = torch.linalg.matrix_norm(dW, ord="fro")
        op = operator_norm(dW)
        u = policy.boundary_delta()
        cos = torch.nn.functional.cosine_similarity(u, self._b, dim=-1)
        cos = torch.where(u.norm(dim=-1) > 0, cos, torch.zeros_like(cos))
        for b, name in enumerate(self.names):
            self.history.add({"step": step, "split": "weights", "problem": name, "group": None,
                              "dW_fro": float(fro[b]), "dW_op": float(op[b]),
                              "cos_boundary": float(cos[b]),
                              **({"grad_norm": grad_norm} if grad_norm is not None else {})})

    def on_train_start(self, state, policy) -> None:
        self._record(state.step, "train", policy, self.train)
        if self.test is not None:
            self._record(state.step, "test", policy, self.test)
        self._record_weights(state.step, policy, None)

    def on_step_end(self, state, policy, out) -> None:
        step = state.step
        last = step == state.max_steps
        if step % self.log_every == 0 or last:
            # The step's forward pass was at the weights *before* its update; the
            # metrics of step t describe W(t), so they are recomputed unless cheap
            # reuse is impossible to get wrong.
            self._record(step, "train", policy, self.train)
            self._record_weights(step, policy, float(out.grad_norm))
        if self.test is not None and (step % self.eval_every == 0 or last):
            self._record(step, "test", policy, self.test)
