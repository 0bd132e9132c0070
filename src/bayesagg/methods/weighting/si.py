"""Scale-invariant loss: the sum of the log task losses."""

from __future__ import annotations

import torch
from torch import Tensor

from bayesagg.methods.weighting._common import check_positive
from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["ScaleInvariant"]


class ScaleInvariant(LossWeighting):
    """Scale-invariant (SI): every parameter gets the gradient of ``sum_k log L_k``.

    The SI baseline of Navon et al. 2022 (Nash-MTL, experiments) and of the BayesAgg-MTL paper
    (Sec. 5, baseline 3). Its gradient is ``sum_k grad L_k / L_k``, invariant to rescaling any
    one loss. As in the official code no epsilon is added: every loss must be > 0, otherwise a
    ``ValueError`` names the offending tasks. ``last_weights`` are ones (the weights on the log
    losses); the effective weights on the raw losses are ``1 / L_k``. Stateless.
    """

    name = "si"
    # data parallelism: d log L = dL / L needs the global batch's L (docs/distributed.md)
    global_losses = True

    def check(self, losses: Tensor) -> None:
        check_positive(losses, self.name)

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k log L_k``."""
        self.last_weights = torch.ones_like(losses.detach())
        return losses.log().sum()
