"""Linear scalarisation: the plain sum of the task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesagg.methods.base import Method, check_losses
from bayesagg.methods.weighting._common import backward_objective

__all__ = ["LinearScalarization"]


class LinearScalarization(Method):
    """Linear scalarisation (LS): every parameter gets the gradient of ``sum_k L_k``.

    The uniform-weight baseline of the BayesAgg-MTL paper (Sec. 5, "LS"). It is also what
    BayesAgg-MTL trains with during its warm-up epochs. Weights are 1 for every task (the plain
    sum, as in the Nash-MTL code's ``LinearScalarization``; not the mean). Stateless.
    """

    name = "ls"
    space = "loss"

    def backward(
        self,
        losses: Tensor,
        *,
        shared_parameters: Sequence[Tensor],
        task_parameters: Sequence[Tensor] = (),
        representation: Tensor | None = None,
        heads: Sequence[nn.Module] | None = None,
        targets: Sequence[Tensor] | None = None,
    ) -> None:
        """Accumulate the gradient of ``losses.sum()`` into the shared and task parameters."""
        check_losses(losses, self.num_tasks)
        self.last_weights = torch.ones_like(losses.detach())
        backward_objective(losses.sum(), self.name, shared_parameters, task_parameters)
