"""ExcessMTL: task weights that grow with each task's estimated excess risk."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from bayesagg.methods.base import Aggregator, running_state

__all__ = ["ExcessMTL"]


class ExcessMTL(Aggregator):
    """Robust MTL with excess risks (He et al. 2024, ICML, Sec. 3, Eq. 6-9, Algorithm 1).

    Each task's excess risk is estimated by a second-order expansion around the optimum,
    ``E_i ~ g_i^T H_i^{-1} g_i`` (Eq. 6), with the diagonal Hessian approximated AdaGrad-style
    by the running sum of the squared gradients, ``H_i = diag(sqrt(sum_{s<=t} g_{i,s}^2 +
    1e-7))`` (Eq. 7). The first step's estimates are the baseline ``E_i^0`` (Sec. 3.2, "scale
    processing"); from the second step on, the weights follow the exponentiated-gradient step
    ``w_i <- w_i exp(eta E_i / E_i^0)`` renormalised (Eq. 9), and the update is ``J^T w``.

    Conventions of the official code (its LibMTL ``ExcessMTL`` weighting, which produced the
    paper's numbers): the weights start at 1 and are renormalised to sum to K (torchjd: start
    at 1/K, sum 1); the first step only sets the baseline; ``robust_step_size`` (eta) defaults
    to 1e-2 (LibMTL's and the official configuration's default); the weighted loss
    ``sum_i w_i L_i`` is back-propagated through every parameter, so the task-specific
    parameters also receive the weighted gradients (:meth:`task_weights`).

    Deviations: the update is done in log space (the same weights, without overflow); a task
    whose first estimate is 0 (zero gradient) gets its baseline at its first non-zero estimate
    and no update before (the official code divides by 0).

    Stateful: the squared-gradient sums [K, P], the baseline and the weights
    (:meth:`reset`, :meth:`state_dict`). The sums are per coordinate of the Jacobian, so the
    method has no representation-level variant (the per-example coordinates of ``h`` change
    meaning from one batch to the next).
    """

    name = "excess-mtl"
    space = "parameters"
    hyperparameters = ("robust_step_size",)
    state_fields = ("squared_sum", "baseline", "log_weights", "steps")
    # not scale-homogeneous: the official 1e-7 under the square root of the squared-gradient
    # sums dominates for gradients below ~3e-4, changing the weights' ratios
    properties = frozenset({"permutation_invariant"})
    #: Read by bayesagg.methods.representation: no "-ub" variant (see above).
    per_coordinate_state: ClassVar[bool] = True

    def __init__(self, num_tasks: int, *, robust_step_size: float = 1e-2) -> None:
        super().__init__(num_tasks)
        if not robust_step_size > 0:
            raise ValueError(f"robust_step_size must be positive, got {robust_step_size}")
        self.robust_step_size = float(robust_step_size)
        self.reset()

    def reset(self) -> None:
        """Forget the squared-gradient sums, the baseline and the weights."""
        self.squared_sum: Tensor | None = None
        self.baseline: Tensor | None = None
        self.log_weights = torch.zeros(self.num_tasks, dtype=torch.float64)
        self.steps = 0

    def excess_risks(self, jacobian: Tensor) -> Tensor:
        """Accumulate ``g_i^2`` and return the estimates ``g_i^T H_i^{-1} g_i`` [K] (Eq. 6-7)."""
        squared = jacobian.detach() ** 2
        self.squared_sum = running_state(
            self.squared_sum,
            squared,
            "ExcessMTL keeps per-coordinate sums of shape {state}, got a Jacobian of shape "
            "{value} (call reset() for a new model)",
        )
        self.squared_sum += squared.to(self.squared_sum)
        return (squared / torch.sqrt(self.squared_sum + 1e-7)).sum(dim=1).double().cpu()

    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Update the weights with this step's excess risks; return ``J^T w`` [P]."""
        if jacobian.shape[0] != self.num_tasks:
            raise ValueError(f"expected {self.num_tasks} rows, got {jacobian.shape[0]}")
        risks = self.excess_risks(jacobian)
        if self.baseline is None:
            self.baseline = torch.zeros_like(risks)
        unset = self.baseline == 0
        ready = ~unset
        ratio = torch.zeros_like(risks)
        ratio[ready] = risks[ready] / self.baseline[ready]
        self.baseline[unset] = risks[unset]
        self.log_weights = self.log_weights + self.robust_step_size * ratio
        self.steps += 1
        w = self.num_tasks * torch.softmax(self.log_weights, dim=0)
        weights = w.to(dtype=jacobian.dtype, device=jacobian.device)
        self.last_weights = weights.detach().cpu()
        return weights @ jacobian

    def task_weights(self) -> Tensor:
        """The task-specific parameters get the weighted gradients too (official code)."""
        if self.last_weights is None:
            return torch.ones(self.num_tasks)
        return self.last_weights
