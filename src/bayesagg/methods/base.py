"""The one training-loop contract every multi-task method follows.

A training step computes the K per-task mean losses (graph attached) and hands them to the
method, together with what the method may need:

    losses = bayesagg.tasks.task_losses(groups, [head(h) for head in heads], targets)
    method.backward(
        losses,
        shared_parameters=list(encoder.parameters()),
        task_parameters=list(heads.parameters()),
        representation=h,                 # needed by the -UB methods and BayesAgg-MTL
        heads=heads, targets=targets,     # needed by BayesAgg-MTL only
    )
    optimizer.step()
    if method.needs_after_step:           # FAMO: the same batch's losses after the update
        method.after_step(new_losses)
    ...
    method.end_epoch(epoch_mean_losses)   # DWA, IGBv2, BayesAgg-MTL (prior refit)

``backward`` fills ``.grad`` (accumulating, like ``Tensor.backward``) of

- the shared parameters, with the method's combined direction (in parameter space, or in
  representation space pushed through the encoder with ``representation.backward``);
- the task-specific parameters, with the gradient of the plain sum of the task losses (each
  head only sees its own loss, so this is each head's own gradient), except for loss-weighting
  methods, where every parameter receives the gradient of the weighted sum (their definition).

Methods with trainable parameters (UW, GradNorm, FAMO) expose them through ``parameters()``
so the caller can add them to an optimiser, or update them internally and say so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

__all__ = ["Aggregator", "Method", "Space", "check_losses"]

Space = Literal["loss", "parameters", "representation"]


def check_losses(losses: Tensor, num_tasks: int) -> None:
    """Raise ``ValueError`` unless ``losses`` is a finite vector of ``num_tasks`` losses."""
    if losses.ndim != 1 or losses.shape[0] != num_tasks:
        raise ValueError(
            f"expected {num_tasks} task losses of shape [{num_tasks}], got {tuple(losses.shape)}"
        )
    bad = ~torch.isfinite(losses.detach())
    if bad.any():
        idx = bad.nonzero().flatten().tolist()
        raise FloatingPointError(f"non-finite loss for task(s) {idx}: {losses.detach().tolist()}")


class Method(ABC):
    """Base class: one object per training run, holding only the method's own state."""

    #: Registry name, e.g. ``"nash-mtl"``.
    name: ClassVar[str] = ""
    #: Where the method combines the tasks.
    space: ClassVar[Space] = "parameters"
    #: True if :meth:`after_step` must be called after each optimiser step.
    needs_after_step: ClassVar[bool] = False

    def __init__(self, num_tasks: int) -> None:
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        #: The last task weights the method used (shape [K]) where it has weights, for plots.
        self.last_weights: Tensor | None = None

    @abstractmethod
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
        """Fill the ``.grad`` of shared and task-specific parameters for this step."""

    def after_step(self, losses: Tensor) -> None:  # noqa: B027 - optional hook
        """Called with the same batch's losses after the optimiser step (FAMO); default: nothing."""

    def end_epoch(self, losses: Tensor | None = None) -> None:  # noqa: B027 - optional hook
        """Called at the end of each training epoch with the epoch's mean task losses [K]."""

    def parameters(self) -> list[nn.Parameter]:
        """Return the method's trainable parameters for the caller's optimiser (default none)."""
        return []

    def state_dict(self) -> dict[str, Any]:
        """Return everything needed to resume this method."""
        return {"num_tasks": self.num_tasks, "last_weights": self.last_weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the state returned by :meth:`state_dict`."""
        if state.get("num_tasks") != self.num_tasks:
            raise ValueError(
                f"state is for {state.get('num_tasks')} tasks, this {self.name} has {self.num_tasks}"
            )
        self.last_weights = state.get("last_weights")

    def reset(self) -> None:  # noqa: B027 - stateless by default
        """Forget any state accumulated during training."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(num_tasks={self.num_tasks})"


class Aggregator(Method):
    """A method that combines a K x P Jacobian into one direction of length P.

    Subclasses implement :meth:`aggregate`; ``backward`` computes the Jacobian of the losses
    w.r.t. the shared parameters (``space = "parameters"``) or w.r.t. the representation,
    flattened per example to B*D as in Sener & Koltun 2018 (``space = "representation"``),
    and applies the direction.
    """

    @abstractmethod
    def aggregate(self, jacobian: Tensor) -> Tensor:
        """Return the combined direction [P] of a Jacobian [K, P] (rows are task gradients)."""
