"""Loss weightings: methods whose every parameter receives the gradient of one scalar objective.

LS, SI, STL, RLW, DWA, UW, UW-SO, STCH, GO4Align, IGBv2 differ only in that objective of the K task
losses (a weighted sum, a sum of logs, a smooth maximum) and in the state their weights
carry from step to step. A subclass states its :meth:`LossWeighting.objective` (which also
records ``last_weights``); the base does the rest the same way for all: check the losses,
hand the objective the global batch's losses under data parallelism when the objective is
not linear in them, and accumulate the objective's gradient into the shared and task-specific
parameters and the method's own trainable parameters (UW's log-variances).
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

from torch import Tensor

from bayesagg.methods.base import StepInputs, StepMethod
from bayesagg.methods.weighting._common import backward_objective

__all__ = ["LossWeighting"]


class LossWeighting(StepMethod):
    """A method whose every parameter receives the gradient of :meth:`objective`."""

    space = "loss"
    takes_loss_scale = True  # the objective's gradient, times the scale
    #: Whether the objective takes the global batch's losses under data parallelism
    #: (:func:`bayesagg.distributed.global_losses`): needed when its gradient depends on the
    #: loss values (logs, softmaxes), not for a weighted sum with weights fixed for the step.
    global_losses: ClassVar[bool] = False

    def check(self, losses: Tensor) -> None:
        """Raise ``ValueError`` for losses this objective cannot take (called before it)."""

    @abstractmethod
    def objective(self, losses: Tensor) -> Tensor:
        """Return the scalar whose gradient every parameter receives; record ``last_weights``."""

    def fill_gradients(self, losses: Tensor, inputs: StepInputs) -> None:
        """Accumulate the gradient of :meth:`objective` into every parameter it depends on."""
        shared_parameters, task_parameters, _, scale = inputs
        self.check(losses)
        if self.global_losses:
            from bayesagg.distributed import global_losses, resolve_group

            losses = global_losses(losses, resolve_group(self.process_group))
        objective = self.objective(losses)  # weights from the unscaled losses
        backward_objective(
            objective if scale == 1.0 else objective * scale,
            self.name,
            shared_parameters,
            task_parameters,
            self.parameters(),
        )
