"""GO4Align: group risk minimisation with risk-guided indicators clustered into task groups."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from bayesagg.methods.weighting._common import check_positive
from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["GO4Align"]


class GO4Align(LossWeighting):
    """Group optimisation for multi-task alignment (Shen et al. 2024, NeurIPS, Sec. 3-4).

    Adaptive group risk minimisation, loss-oriented (no per-task gradients). At each step, with
    the detached losses ``L``:

    - risk-guided group indicators: the "adversarial" probabilities ``p`` (start uniform) take
      an exponentiated step ``p <- p exp(-eta L) / Z`` (``eta = robust_step_size``), and the
      indicator of task i is ``gamma_i = (sum_j L_j / L_i) p_i``, so that ``gamma_i L_i =
      p_i sum_j L_j``: weighted losses balanced, tilted by ``p`` away from tasks with a history
      of large losses;
    - dynamical group assignment: k-means on the K scalar indicators into ``num_groups``
      groups; every task's weight is its group's centre (the mean indicator of the group);
    - every parameter receives the gradient of ``sum_i w_i L_i``.

    As in the official code (``methods/cluster_methods.py``, class ``GO4ALIGN``): scikit-learn's
    ``KMeans`` with ``random_state=42`` (``n_init=10``, the scikit-learn default when that code
    was written); ``num_groups = 1`` gives every task the mean indicator;
    ``robust_step_size=1e-4`` (official default).

    ``num_groups`` defaults to 2 here. The official trainer's command-line default is 1, with
    which the method degenerates to a time-varying multiple of linear scalarisation; the value
    used for each published table is not stated in the code we could read, so 2 (the smallest
    real grouping) is our choice, not a published setting: set it per benchmark (``--hp
    num_groups=...``).

    Losses must be > 0 (the indicator divides by them; a ``ValueError`` names the task
    otherwise). Stateful: ``p`` (:meth:`reset`, :meth:`state_dict`). ``last_weights`` are the
    group weights ``w``.
    """

    name = "go4align"
    hyperparameters = ("num_groups", "robust_step_size")
    state_fields = ("probs",)

    def __init__(
        self, num_tasks: int, *, num_groups: int = 2, robust_step_size: float = 1e-4
    ) -> None:
        super().__init__(num_tasks)
        if int(num_groups) != num_groups or not 1 <= num_groups <= num_tasks:
            raise ValueError(
                f"go4align: num_groups must be an integer in [1, {num_tasks}], got {num_groups}"
            )
        if not robust_step_size >= 0:
            raise ValueError(f"go4align: robust_step_size must be >= 0, got {robust_step_size}")
        self.num_groups = int(num_groups)
        self.robust_step_size = float(robust_step_size)
        self.reset()

    def reset(self) -> None:
        """Back to uniform probabilities."""
        self.probs = torch.full((self.num_tasks,), 1.0 / self.num_tasks, dtype=torch.float64)

    def indicators(self, losses: Tensor) -> Tensor:
        """Update ``p`` with this step's losses; return the group indicators ``gamma`` [K]."""
        values = losses.detach().double().cpu()
        probs = self.probs * torch.exp(-self.robust_step_size * values)
        self.probs = probs / probs.sum()
        return values.sum() / values * self.probs

    def group_weights(self, gamma: Tensor) -> Tensor:
        """Return each task's group centre after k-means on the scalar indicators [K]."""
        if self.num_groups == 1:
            return torch.full_like(gamma, float(gamma.mean()))
        from sklearn.cluster import KMeans

        points = gamma.numpy().reshape(-1, 1)
        if np.unique(points).size < self.num_groups:  # fewer distinct values than groups
            return gamma.clone()  # each distinct value is its own centre
        kmeans = KMeans(n_clusters=self.num_groups, random_state=42, n_init=10)
        labels = kmeans.fit_predict(points)
        centres = kmeans.cluster_centers_.reshape(-1)
        return torch.as_tensor(centres[labels], dtype=torch.float64)

    def check(self, losses: Tensor) -> None:
        check_positive(losses, self.name)

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``sum_i w_i L_i`` with the group weights of this step's losses."""
        from bayesagg.distributed import all_reduce_mean, resolve_group

        # data parallelism: the indicators (and p's update) from the global batch's losses, so
        # every process clusters the same values; the weighted sum's gradient is then averaged
        values = all_reduce_mean(losses.detach(), resolve_group(self.process_group))
        weights = self.group_weights(self.indicators(values))
        self.last_weights = weights
        return (weights.to(losses) * losses).sum()
