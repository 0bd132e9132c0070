"""Scale-invariant loss: the sum of the log task losses."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesagg.distributed import global_losses, resolve_group
from bayesagg.methods.base import Method, check_losses
from bayesagg.methods.weighting._common import backward_objective, check_positive

__all__ = ["ScaleInvariant"]


class ScaleInvariant(Method):
    """Scale-invariant (SI): every parameter gets the gradient of ``sum_k log L_k``.

    The SI baseline of Navon et al. 2022 (Nash-MTL, experiments) and of the BayesAgg-MTL paper
    (Sec. 5, baseline 3). Its gradient is ``sum_k grad L_k / L_k``, invariant to rescaling any
    one loss. As in the official code no epsilon is added: every loss must be > 0, otherwise a
    ``ValueError`` names the offending tasks. ``last_weights`` are ones (the weights on the log
    losses); the effective weights on the raw losses are ``1 / L_k``. Stateless.
    """

    name = "si"
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
        """Accumulate the gradient of ``sum_k log L_k`` into the shared and task parameters."""
        check_losses(losses, self.num_tasks)
        check_positive(losses, self.name)
        self.last_weights = torch.ones_like(losses.detach())
        # data parallelism: d log L = dL / L needs the global batch's L (docs/distributed.md)
        losses = global_losses(losses, resolve_group(self.process_group))
        backward_objective(losses.log().sum(), self.name, shared_parameters, task_parameters)
