"""Dynamic weight average: task weights from the rate of change of the epoch losses."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from bayesagg.distributed import all_reduce_mean, resolve_group
from bayesagg.methods.base import check_losses
from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["DynamicWeightAverage"]


class DynamicWeightAverage(LossWeighting):
    """Dynamic weight average (DWA): gradient of ``sum_k lambda_k L_k`` with epoch-wise weights.

    Liu, Johns & Davison 2019, "End-to-End Multi-Task Learning with Attention" (CVPR), Eq. 7:

        lambda_k(t) = K exp(r_k(t-1) / T) / sum_i exp(r_i(t-1) / T),
        r_k(t-1) = L_k(t-1) / L_k(t-2),

    where ``L_k(t)`` is the mean training loss of task k over epoch t, handed to
    :meth:`end_epoch`. The first two epochs use ``lambda = 1`` (the paper's initialisation);
    ``temperature`` T = 2 is the paper's and MTAN's default. The weights sum to K.

    Deviation note: the Nash-MTL / IGB code bases replace epoch averages by running means over
    two windows of 25 iterations; this class follows the paper (epoch averages). An epoch mean
    loss <= 0 makes the ratio undefined and raises ``ValueError``.

    Stateful: the last two epoch losses and the current weights (``reset``, ``state_dict``).
    """

    name = "dwa"
    hyperparameters = ("temperature",)
    state_fields = ("history", "weights")

    def __init__(self, num_tasks: int, *, temperature: float = 2.0) -> None:
        super().__init__(num_tasks)
        if not (temperature > 0 and math.isfinite(temperature)):
            raise ValueError(f"dwa: temperature must be finite and > 0, got {temperature}")
        self.temperature = float(temperature)
        self.reset()

    def reset(self) -> None:
        """Forget the epoch history: back to uniform weights."""
        self.history: list[Tensor] = []  # mean losses of the last (at most) two epochs
        self.weights = torch.ones(self.num_tasks, dtype=torch.float64)
        self.last_weights = None

    def end_epoch(self, losses: Tensor | None = None) -> None:
        """Record the epoch's mean task losses [K] and recompute the weights for the next epoch."""
        if losses is None:
            raise ValueError("dwa: end_epoch needs the epoch's mean task losses [K]")
        # data parallelism: the mean over processes (the caller's epoch means may be local)
        losses = all_reduce_mean(losses.detach(), resolve_group(self.process_group))
        losses = losses.to(dtype=torch.float64, device="cpu")
        check_losses(losses, self.num_tasks)
        bad = (losses <= 0).nonzero().flatten().tolist()
        if bad:
            raise ValueError(
                f"dwa: epoch mean loss must be > 0 for the ratio, tasks {bad}: {losses.tolist()}"
            )
        self.history = [*self.history, losses.clone()][-2:]
        if len(self.history) == 2:
            ratio = self.history[1] / self.history[0]
            self.weights = self.num_tasks * torch.softmax(ratio / self.temperature, dim=0)

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_k lambda_k L_k`` with this epoch's weights."""
        w = self.weights.to(device=losses.device, dtype=losses.dtype)
        self.last_weights = w
        return (w * losses).sum()
