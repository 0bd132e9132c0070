"""Single-task learning: only one task's loss is back-propagated."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from bayesagg.methods.weighting.loss_weighting import LossWeighting

__all__ = ["SingleTask"]


class SingleTask(LossWeighting):
    """Single-task learning (STL): every parameter gets the gradient of ``L_task`` alone.

    The STL reference of the BayesAgg-MTL paper (Sec. 5, baseline 1) trains one model per task
    under the same set-up as the multi-task methods; Delta_m is measured against it. STL is
    therefore a *runner mode*: the runner builds K models and trains model k with
    ``SingleTask(K, task=k)``. The other tasks' losses may still be computed (for logging) but
    contribute no gradient; heads of the other tasks are left without ``.grad``.
    """

    name = "stl"
    hyperparameters = ("task",)

    def __init__(self, num_tasks: int, *, task: int) -> None:
        super().__init__(num_tasks)
        if isinstance(task, bool) or not isinstance(task, int):
            raise ValueError(f"stl: task must be an int index, got {task!r}")
        if not 0 <= task < num_tasks:
            raise ValueError(f"stl: task must be in [0, {num_tasks}), got {task}")
        self.task = task

    def objective(self, losses: Tensor) -> Tensor:
        """Return ``L_task``."""
        weights = torch.zeros_like(losses.detach())
        weights[self.task] = 1.0
        self.last_weights = weights
        return losses[self.task]

    def state_dict(self) -> dict[str, Any]:
        """Return the base state plus the trained task index."""
        return {**super().state_dict(), "task": self.task}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state; refuses a state saved for another task."""
        if state.get("task", self.task) != self.task:
            raise ValueError(
                f"stl: state is for task {state.get('task')}, this one trains {self.task}"
            )
        super().load_state_dict(state)
