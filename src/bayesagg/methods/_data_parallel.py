"""Data-parallel directions of the representation-level aggregators (docs/distributed.md).

With the global batch split over N processes, the Jacobian of the K global mean losses w.r.t.
the global representation [B, D] has, on the rows of process r's examples, the local Jacobian
J_r (of the local mean losses over B/N examples) divided by N. So

- the Gramian of the global Jacobian is ``G = sum_r J_r J_r^T / N^2``: one K x K all-reduce;
- a method whose direction is ``w(G) @ J`` (the weights depend on the Jacobian only through
  its Gramian, and on the global losses: a Gramian weighting) gives on process r's
  examples ``w @ J_r / N``; each process pushes ``w @ J_r`` through the encoder and the mean
  over processes of the encoder gradients (DDP's, or
  :func:`bayesagg.distributed.average_gradients`) is the one-process gradient of the global
  batch;
- GradDrop's sign purity uses the batch sum of ``sign(h) * grad_h L_k`` [K, D]: one K x D
  all-reduce, the masks are then the same on every process (same generator state);
- NTKMTL-SR's NTK eigenvalues are, per task, the largest squared norm of a chunk's rows of the
  global Jacobian (the chunks of the global batch, ``torch.chunk`` of its B indices); each
  process adds its rows' squared norms into the chunks they belong to: one K x C all-reduce
  (C chunks).

The weights of a Gramian weighting (:class:`bayesagg.methods.gramian.GramianWeighting`) are
obtained from the method itself by applying it to a K x K square root S of the all-reduced
Gramian (``S S^T = G``): its ``last_weights`` are the w of ``w @ S``, i.e. the weights it would
give the global Jacobian, computed identically on every process. That holds because such a
rule sees J only through its Gramian: it is invariant under ``J -> J Q`` for any Q with
orthonormal rows (``J = S Q`` for some such Q). ExcessMTL's per-coordinate sums and GradDrop's
per-coordinate signs are not of that kind; GradDrop and NTKMTL-SR have their own exact forms
(their ``data_parallel_direction``), ExcessMTL none. Which classes qualify is declared with
the classes (``Aggregator.data_parallel``), not listed here; this module does not import the
methods. Checked on every call: the direction on S must be ``last_weights @ S``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, all_reduce_sum, rank, world_size

__all__ = [
    "gramian_square_root",
    "ntkmtl_sr_eigenvalues",
    "representation_direction",
    "square_root_direction",
]


def gramian_square_root(gramian: Tensor) -> Tensor:
    """Return S [K, K] with ``S S^T = G`` for a symmetric PSD ``G`` (negative rounding clipped)."""
    lam, vec = torch.linalg.eigh(0.5 * (gramian + gramian.mT))
    return vec * lam.clamp(min=0).sqrt()


def representation_direction(
    method: Any, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
) -> Tensor:
    """Return this process's direction [B/N, D] so that the mean over processes is exact.

    ``jacobian`` [K, B/N, D]: the local mean losses' gradients w.r.t. the local representation.
    Raises ``NotImplementedError`` for a representation-level method with no exact form
    (``method.data_parallel`` False); otherwise the method's own ``data_parallel_direction``.
    """
    if not getattr(method, "data_parallel", False):
        raise NotImplementedError(
            f"{method.name or type(method).__name__} in representation space has no exact "
            "data-parallel form (its direction is not w(J J^T) @ J); run it on one process"
        )
    return method.data_parallel_direction(jacobian, losses, representation, group)


def square_root_direction(method: Any, jacobian: Tensor, losses: Tensor, group: Any) -> Tensor:
    """A Gramian weighting's local direction: its weights on S, applied to the local rows."""
    k = jacobian.shape[0]
    flat = jacobian.reshape(k, -1)
    n = world_size(group)
    gramian = all_reduce_sum(flat.double() @ flat.double().mT, group) / n**2
    square_root = gramian_square_root(gramian).to(flat.dtype)
    on_root = method.direction(
        square_root, losses=all_reduce_mean(losses.detach(), group), representation=None
    )
    if method.last_weights is None:
        raise RuntimeError(f"{method.name}: no weights recorded by the Gramian-based direction")
    weights = method.last_weights.to(dtype=flat.dtype, device=flat.device)
    # the weights must be those of the direction, or w @ J_r would not be the method's update
    expected = (weights @ square_root).reshape(on_root.shape)
    tol = torch.finfo(flat.dtype).eps ** 0.5 * (float(weights.norm() * square_root.norm()) + 1e-30)
    if float((on_root - expected).norm()) > tol:
        raise RuntimeError(
            f"{method.name}: last_weights do not reproduce its direction (|d - w S| = "
            f"{float((on_root - expected).norm()):.3g}); the data-parallel form needs them"
        )
    return (weights @ flat).view(jacobian.shape[1:])


def ntkmtl_sr_eigenvalues(num_chunks: int, jacobian: Tensor, group: Any) -> Tensor:
    """NTKMTL-SR's eigenvalues [K] from the chunks of the global batch (``torch.chunk`` of B).

    Process r holds the global rows ``r b .. (r+1) b - 1`` (equal shares b = B/N, checked with
    the same all-reduce), and its Jacobian rows are N times the global ones. Each chunk's
    squared norm is the sum of its rows' squared norms over the processes.
    """
    k, b = jacobian.shape[:2]
    n = world_size(group)
    total = n * b
    chunk_of = torch.cat(
        [
            torch.full((c.numel(),), i)
            for i, c in enumerate(torch.chunk(torch.arange(total), num_chunks))
        ]
    )
    sizes = torch.bincount(chunk_of).double()
    mine = chunk_of[rank(group) * b : (rank(group) + 1) * b]
    row_norms = (jacobian.detach().reshape(k, b, -1).double() ** 2).sum(dim=2).cpu() / n**2
    sums = torch.zeros(k, sizes.numel() + 1, dtype=torch.float64)
    sums[:, :-1].index_add_(1, mine, row_norms)
    sums[:, -1] = b
    sums = all_reduce_sum(sums.to(jacobian.device), group).cpu()
    if not torch.all(sums[:, -1] == total):
        raise ValueError(
            f"ntkmtl-sr: the processes hold unequal parts of the batch (this one {b}, "
            f"{int(sums[0, -1])} in all over {n}); data parallelism needs equal shares"
        )
    return ((total / sizes) ** 2 * sums[:, :-1]).max(dim=1).values
