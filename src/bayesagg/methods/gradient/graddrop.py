"""GradDrop: keep, per coordinate, only the gradients of one randomly chosen sign."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from bayesagg.methods._seeding import check_seed, reseed
from bayesagg.methods.base import Aggregator

__all__ = ["GradDrop"]


class GradDrop(Aggregator):
    """Gradient sign dropout (Chen et al. 2020, NeurIPS, "Just Pick a Sign", Algorithm 1).

    The paper defines GradDrop as a layer on the activations ``A`` of the last shared layer, so
    this is a representation-space method (``A = h``, [B, D]). :meth:`backward` follows
    Algorithm 1: ``G_i = sum_batch sign(A) * dL_i/dA`` (batch-separated activations), the sign
    purity ``P = 1/2 (1 + sum_i G_i / sum_i |G_i|)`` per feature, one ``U ~ Uniform(0, 1)``
    per feature, masks ``M_i = [P > U][G_i > 0] + [P < U][G_i < 0]`` broadcast over the batch,
    and the gradient ``sum_i (l_i + (1 - l_i) M_i) dL_i/dA`` sent into the encoder.

    :meth:`aggregate` on a plain K x P Jacobian is lines 10-15 of Algorithm 1 without the
    ``sign(A)`` factor and without the batch sum (each column is its own feature), which is
    what torchjd's ``GradDrop`` implements; with the same seed the two agree exactly.

    ``leak`` (``l_i``, one value or one per task, in [0, 1]; 0 is pure GradDrop) and the random
    draws come from a private generator seeded with ``seed`` (None: from the global RNG at
    construction); ``f`` of the paper is the identity. Features where every task's gradient is
    0 have no sign and are dropped (they contribute 0 anyway).
    """

    name = "graddrop"
    space = "representation"
    hyperparameters = ("leak", "seed")
    state_fields = ("generator",)
    properties = frozenset({"permutation_invariant", "scale_homogeneous"})
    # the sign purity needs only the batch sums of sign(h) * dL_i/dh: exact with one K x D
    # all-reduce (data_parallel_direction)
    data_parallel: ClassVar[bool] = True

    def __init__(
        self, num_tasks: int, *, leak: float | Sequence[float] = 0.0, seed: int | None = None
    ) -> None:
        super().__init__(num_tasks)
        values = [float(leak)] * num_tasks if isinstance(leak, int | float) else list(leak)
        if len(values) != num_tasks or not all(0.0 <= v <= 1.0 for v in values):
            raise ValueError(
                f"leak must be one value or {num_tasks} values in [0, 1], got {leak!r}"
            )
        check_seed(seed)
        self.leak = torch.tensor(values, dtype=torch.float64)
        self.seed = seed
        self.generator = torch.Generator()
        self.reset()

    def reset(self) -> None:
        """Re-seed the generator of the uniform draws."""
        reseed(self.generator, self.seed)

    def _masked_sum(self, signed: Tensor, grads: Tensor) -> Tensor:
        """Return ``sum_i (l_i + (1 - l_i) M_i) grads_i`` with the masks of the signed [K, *F]."""
        purity = 0.5 * (1.0 + signed.sum(dim=0) / signed.abs().sum(dim=0))
        u = torch.rand(purity.shape, generator=self.generator, dtype=purity.dtype)
        u = u.to(purity.device)
        mask = ((purity > u) & (signed > 0)) | ((purity < u) & (signed < 0))
        extra = grads.ndim - signed.ndim  # the batch axis, when signed is batch-summed
        mask = mask.reshape(mask.shape[:1] + (1,) * extra + mask.shape[1:])
        leak = self.leak.to(grads).reshape((-1,) + (1,) * (grads.ndim - 1))
        return ((leak + (1.0 - leak) * mask) * grads).sum(dim=0)

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return the GradDrop combination [P] of a Jacobian [K, P] (each column one feature)."""
        self.check_rows(jacobian)
        # When the masks come from the rows themselves, sum_i M_i g_i only needs the column sums
        # of the positive and negative parts: [P > U] sum_i g_i^+ + [P < U] sum_i g_i^-, and
        # P = 1/2 (1 + sum_i g_i / sum_i |g_i|) = pos / (pos - neg). Two passes over J.
        keep = 1.0 - self.leak.to(jacobian)
        pos = keep @ jacobian.clamp(min=0)
        neg = keep @ jacobian - pos
        if torch.all(keep == 1.0):
            purity = pos / (pos - neg)
        else:
            all_pos = jacobian.clamp(min=0).sum(dim=0)
            purity = all_pos / (2 * all_pos - jacobian.sum(dim=0))
        u = torch.rand(purity.shape, generator=self.generator, dtype=purity.dtype)
        u = u.to(purity.device)
        out = pos * (purity > u) + neg * (purity < u)  # multiplying by masks beats where()
        if torch.any(keep != 1.0):
            out = out + self.leak.to(jacobian) @ jacobian
        return out

    def direction(
        self, jacobian: Tensor, *, losses: Tensor, representation: Tensor | None
    ) -> Tensor:
        if representation is None:  # parameter-space use: each coordinate its own feature
            return super().direction(jacobian, losses=losses, representation=None)
        signed = (torch.sign(representation.detach()) * jacobian).sum(dim=1)
        return self._masked_sum(signed, jacobian)

    def data_parallel_direction(
        self, jacobian: Tensor, losses: Tensor, representation: Tensor, group: Any
    ) -> Tensor:
        """The masks from the all-reduced batch sums ``sum_b sign(h) dL_i/dh`` [K, D]."""
        from bayesagg.distributed import all_reduce_sum

        signed = (torch.sign(representation.detach()) * jacobian).sum(dim=1)
        return self._masked_sum(all_reduce_sum(signed, group), jacobian)
