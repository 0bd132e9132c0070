"""UW-SO: analytical uncertainty weights, softened by a softmax with a temperature."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["SoftOptimalUncertaintyWeighting"]


class SoftOptimalUncertaintyWeighting(LossWeighting):
    """Soft optimal uncertainty weighting (Kirchdorfer et al. 2024, GCPR, "Analytical
    Uncertainty-Based Loss Weighting in Multi-Task Learning").

    Minimising Kendall et al.'s uncertainty objective ``L_k / sigma_k^2 + log sigma_k^2`` over
    ``sigma_k^2`` in closed form gives ``sigma_k^2 = L_k``: the optimal uncertainty weight of
    task k is ``1 / L_k`` (UW-O), computed from the current batch instead of learned. UW-SO
    softens these weights with a softmax at temperature ``T``:

        w = softmax((1 / (L + eps)) / T),     every parameter gets the gradient of sum_k w_k L_k,

    with the losses detached in ``w``. As in the authors' code the softmax is of the inverse
    losses themselves, the weights sum to 1 and ``eps = 1e-8``; ``T -> inf`` gives the equal
    weights 1/K, small ``T`` all the weight to the task with the smallest loss. ``temperature``
    defaults to 1.0, the default of the authors' code; the paper tunes it per benchmark (we
    found no single recommended value), so set it per benchmark (``--hp temperature=...``).

    Losses must exceed ``-eps`` (a ``ValueError`` names the task otherwise). Stateless.
    ``last_weights`` are ``w``.
    """

    name = "uw-so"
    hyperparameters = ("temperature", "eps")
    # data parallelism: the weights are those of the global batch's losses
    global_losses = True

    def __init__(self, num_tasks: int, *, temperature: float = 1.0, eps: float = 1e-8) -> None:
        super().__init__(num_tasks)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"uw-so: temperature must be finite and > 0, got {temperature}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"uw-so: eps must be finite and >= 0, got {eps}")
        self.temperature = float(temperature)
        self.eps = float(eps)

    def check(self, losses: Tensor) -> None:
        bad = (losses.detach() + self.eps <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"uw-so: the weights 1 / (L + eps) need L > -eps; task(s) {bad} have "
                f"{losses.detach()[bad].tolist()}"
            )

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k w_k L_k`` with ``w = softmax(1 / (T (L + eps)))`` of the detached L."""
        inverse = 1.0 / (losses.detach().double() + self.eps)
        weights = torch.softmax(inverse / self.temperature, dim=0).to(losses.dtype)
        self.last_weights = weights
        return (weights * losses).sum()
