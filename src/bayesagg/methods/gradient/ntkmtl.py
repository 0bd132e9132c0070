"""NTKMTL and NTKMTL-SR: task weights that balance the tasks' NTK eigenvalues."""

from __future__ import annotations

import itertools
from typing import Any, ClassVar

import torch
from torch import Tensor

from bayesagg.methods.base import Aggregator
from bayesagg.methods.gramian import ClippedGramianWeighting, Gramian

__all__ = ["NTKMTL", "NTKMTLSR"]


def ntk_weights(eigenvalues: Tensor, exponent: float) -> Tensor:
    """Return ``(sum_j lambda_j / lambda_i)^exponent`` [K]; 0 for a task with ``lambda_i = 0``.

    Qin et al. 2025 (NeurIPS), Sec. 3: under gradient flow, task i's residual decays along its
    NTK's eigen-directions at rates proportional to the eigenvalues; weighting task i's loss by
    ``w_i`` multiplies its NTK block by ``w_i^2``, so ``w_i = (sum_j lambda_j / lambda_i)^(1/2)``
    equalises the largest eigenvalues (``exponent = 1/2``; the official code's ``ntk_exp``).
    A task whose NTK is 0 has a zero gradient: its weight does not change the update and is
    set to 0 instead of infinity.
    """
    total = eigenvalues.sum()
    out = torch.zeros_like(eigenvalues)
    alive = eigenvalues > 0
    out[alive] = (total / eigenvalues[alive]) ** exponent
    return out


class NTKMTL(ClippedGramianWeighting):
    """NTKMTL with one NTK sample per task (Qin, Wang, Liao & Yan 2025, NeurIPS, Algorithm 1).

    The extended NTK of task i on n samples is ``J_i J_i^T`` (n x n, ``J_i`` the per-sample
    gradients of task i w.r.t. the shared parameters); NTKMTL weights task i by
    ``(sum_j lambda_j / lambda_i)^ntk_exp`` with ``lambda_i`` its largest eigenvalue. The
    paper's experiments (and the official code's default) use ``n = 1`` "for a fair comparison
    with the other gradient-oriented methods": the NTK of task i is then the scalar
    ``|g_i|^2`` (``g_i`` the gradient of its batch-mean loss), so the weights come from the
    Gramian's diagonal: ``w_i = (tr G / G_ii)^ntk_exp``.

    Conventions of the official code (on the nash-mtl / FairGrad trainer): the direction is
    ``K J^T w`` ("to match the sum loss"), rescaled to norm ``max_norm`` when longer
    (``clip_grad_norm_``, default 1.0; 0 disables it); ``ntk_exp=0.5`` (the paper's square
    root; the README suggests trying 0.75). ``last_weights`` are the applied weights
    (``K w`` times the clip factor). The task-specific parameters receive the plain sum of
    their gradients (the project's contract; the official code leaves them the same).
    """

    name = "ntkmtl"
    space = "parameters"
    hyperparameters = ("ntk_exp", "max_norm")
    properties = frozenset({"permutation_invariant"})  # clipped: not homogeneous

    def __init__(self, num_tasks: int, *, ntk_exp: float = 0.5, max_norm: float = 1.0) -> None:
        super().__init__(num_tasks)
        if not ntk_exp >= 0:
            raise ValueError(f"ntk_exp must be non-negative, got {ntk_exp}")
        if not max_norm >= 0:
            raise ValueError(f"max_norm must be non-negative (0 disables clipping), got {max_norm}")
        self.ntk_exp = float(ntk_exp)
        self.max_norm = float(max_norm)

    def weights(self, gramian: Gramian, losses: Tensor | None) -> Tensor:
        """Return ``K w`` (before the clip), ``w_i = (sum_j |g_j|^2 / |g_i|^2)^ntk_exp``.

        The squared norms (the Gramian's diagonal) are summed in float64 from the factor's rows.
        """
        squared = (gramian.factor.double() ** 2).sum(dim=1)
        return self.num_tasks * ntk_weights(squared, self.ntk_exp).to(gramian.factor)


class NTKMTLSR(Aggregator):
    """NTKMTL-SR: the NTK through the shared representation (Qin et al. 2025, Algorithm 2).

    The batch is split into ``num_chunks`` consecutive chunks (``torch.chunk``, as the official
    QM9 trainer: n = 4 by default per the official README); task i's NTK is approximated by the
    Gram matrix of the gradients of its chunk-mean losses w.r.t. the shared representation
    ``h`` (instead of the parameters: one backward through the heads, no K x P Jacobian), its
    largest eigenvalue ``lambda_i`` gives ``w_i = (sum_j lambda_j / lambda_i)^ntk_exp``, and
    every parameter receives the gradient of ``sum_i w_i L_i`` (a loss weighting: the
    task-specific parameters get the weighted gradients too, as in the official code, whose
    ``clip_grad_norm_`` runs before the backward and so clips nothing; there is no factor K).

    From the project's per-example Jacobian ``dL_i/dh`` [K, B, ...] the chunk-mean loss
    gradient of chunk c is ``B / |c|`` times its rows restricted to c; the Gram matrix is built
    from exactly these vectors. (For a per-example representation the chunks touch disjoint
    coordinates, so it is diagonal and ``lambda_i`` is the largest chunk's squared norm.)

    Deviation: the weighted objective is ``sum_i w_i L_i`` with the batch-mean ``L_i``; the
    official one averages the chunk means, which differs when B is not a multiple of
    ``num_chunks`` (unequal last chunk). :meth:`aggregate` on a plain K x P Jacobian (no batch
    axis) uses one chunk: ``lambda_i = |g_i|^2``.

    Data parallelism: the chunks are those of the global batch, their squared norms summed over
    the processes (``bayesagg.methods._data_parallel``; docs/distributed.md).
    """

    name = "ntkmtl-sr"
    space = "representation"
    hyperparameters = ("ntk_exp", "num_chunks")
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})
    # the chunks' squared norms are summed over the processes: exact (data_parallel_direction)
    data_parallel: ClassVar[bool] = True

    def __init__(self, num_tasks: int, *, ntk_exp: float = 0.5, num_chunks: int = 4) -> None:
        super().__init__(num_tasks)
        if not ntk_exp >= 0:
            raise ValueError(f"ntk_exp must be non-negative, got {ntk_exp}")
        if int(num_chunks) != num_chunks or num_chunks < 1:
            raise ValueError(f"num_chunks must be a positive integer, got {num_chunks}")
        self.ntk_exp = float(ntk_exp)
        self.num_chunks = int(num_chunks)

    def eigenvalues(self, jacobian: Tensor) -> Tensor:
        """Return each task's largest NTK eigenvalue [K] from a Jacobian [K, B, ...]."""
        k, b = jacobian.shape[:2]
        flat = jacobian.reshape(k, b, -1).double()
        out = torch.zeros(k, dtype=torch.float64, device=jacobian.device)
        bounds = [0]
        for size in [c.shape[0] for c in torch.chunk(torch.arange(b), self.num_chunks)]:
            bounds.append(bounds[-1] + size)
        for i in range(k):
            rows = []
            for lo, hi in itertools.pairwise(bounds):
                row = torch.zeros_like(flat[i])
                row[lo:hi] = flat[i, lo:hi] * (b / (hi - lo))
                rows.append(row.reshape(-1))
            chunks = torch.stack(rows)
            out[i] = torch.linalg.eigvalsh(chunks @ chunks.T)[-1]
        return out.cpu()

    def _weighted(self, eigenvalues: Tensor, jacobian: Tensor) -> Tensor:
        w = ntk_weights(eigenvalues, self.ntk_exp).to(jacobian)
        self.last_weights = w.detach().cpu()
        return torch.tensordot(w, jacobian, dims=1)

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return ``J^T w`` [P] with one chunk (``lambda_i = |g_i|^2``)."""
        self.check_rows(jacobian)
        return self._weighted((jacobian.detach().double() ** 2).sum(dim=1).cpu(), jacobian)

    def direction(
        self, jacobian: Tensor, *, losses: Tensor, representation: Tensor | None
    ) -> Tensor:
        if representation is None or jacobian.ndim < 3:
            return super().direction(jacobian, losses=losses, representation=representation)
        self.check_rows(jacobian)
        return self._weighted(self.eigenvalues(jacobian.detach()), jacobian)

    def data_parallel_direction(
        self, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
    ) -> Tensor:
        """The weights from the chunks of the global batch, applied to the local rows."""
        from bayesagg.methods._data_parallel import ntkmtl_sr_eigenvalues

        return self._weighted(ntkmtl_sr_eigenvalues(self.num_chunks, jacobian, group), jacobian)

    def task_weights(self) -> Tensor:
        """A loss weighting: the task-specific parameters get ``w_i`` times their gradients."""
        return torch.ones(self.num_tasks) if self.last_weights is None else self.last_weights
