"""Data-parallel directions of the representation-level aggregators (docs/distributed.md).

With the global batch split over N processes, the Jacobian of the K global mean losses w.r.t.
the global representation [B, D] has, on the rows of process r's examples, the local Jacobian
J_r (of the local mean losses over B/N examples) divided by N. So

- the Gramian of the global Jacobian is ``G = sum_r J_r J_r^T / N^2``: one K x K all-reduce;
- a method whose direction is ``w(G) @ J`` (MGDA-UB, IMTL-G-UB, Aligned-MTL-UB: the weights
  depend on the Jacobian only through its Gramian, and on the global losses) gives on process
  r's examples ``w @ J_r / N``; each process pushes ``w @ J_r`` through the encoder and the mean
  over processes of the encoder gradients (DDP's, or :func:`bayesagg.distributed.average_gradients`)
  is the one-process gradient of the global batch;
- GradDrop's sign purity uses the batch sum of ``sign(h) * grad_h L_k`` [K, D]: one K x D
  all-reduce, the masks are then the same on every process (same generator state).

The weights are obtained from the method itself by applying it to a K x K square root S of the
all-reduced Gramian (``S S^T = G``): its ``last_weights`` are the w of ``w @ S``, i.e. the
weights it would give the global Jacobian, computed identically on every process.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, all_reduce_sum, world_size
from bayesagg.methods.base import Aggregator

__all__ = ["gramian_square_root", "representation_direction"]


def gramian_square_root(gramian: Tensor) -> Tensor:
    """Return S [K, K] with ``S S^T = G`` for a symmetric PSD ``G`` (negative rounding clipped)."""
    lam, vec = torch.linalg.eigh(0.5 * (gramian + gramian.mT))
    return vec * lam.clamp(min=0).sqrt()


def _gramian_methods() -> tuple[type[Aggregator], ...]:
    from bayesagg.methods.gradient.aligned_mtl import AlignedMTL
    from bayesagg.methods.gradient.imtl import IMTLG
    from bayesagg.methods.gradient.mgda import MGDA

    return (MGDA, IMTLG, AlignedMTL)


def representation_direction(
    method: Aggregator, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
) -> Tensor:
    """Return this process's direction [B/N, D] so that the mean over processes is exact.

    ``jacobian`` [K, B/N, D]: the local mean losses' gradients w.r.t. the local representation.
    Raises ``NotImplementedError`` for a representation-level method with no exact form.
    """
    from bayesagg.methods.gradient.graddrop import GradDrop

    k = jacobian.shape[0]
    if isinstance(method, GradDrop):
        signed = (torch.sign(representation.detach()) * jacobian).sum(dim=1)
        return method._masked_sum(all_reduce_sum(signed, group), jacobian)
    if not isinstance(method, _gramian_methods()):
        raise NotImplementedError(
            f"{method.name or type(method).__name__} in representation space has no exact "
            "data-parallel form (its direction is not w(J J^T) @ J); run it on one process"
        )
    flat = jacobian.reshape(k, -1)
    n = world_size(group)
    gramian = all_reduce_sum(flat.double() @ flat.double().mT, group) / n**2
    square_root = gramian_square_root(gramian).to(flat.dtype)
    method.direction(
        square_root, losses=all_reduce_mean(losses.detach(), group), representation=None
    )
    if method.last_weights is None:
        raise RuntimeError(f"{method.name}: no weights recorded by the Gramian-based direction")
    weights = method.last_weights.to(dtype=flat.dtype, device=flat.device)
    return (weights @ flat).view(jacobian.shape[1:])
