"""Linear scalarisation: the plain sum of the task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["LinearScalarization"]


class LinearScalarization(LossWeighting):
    """Linear scalarisation (LS): every parameter gets the gradient of ``sum_k L_k``.

    The uniform-weight baseline of the BayesAgg-MTL paper (Sec. 5, "LS"). It is also what
    BayesAgg-MTL trains with during its warm-up epochs. Weights are 1 for every task (the plain
    sum, as in the Nash-MTL code's ``LinearScalarization``; not the mean). Stateless.
    """

    name = "ls"

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k L_k``."""
        self.last_weights = torch.ones_like(losses.detach())
        return losses.sum()
