"""Task groups: the three kinds of linear-head task that BayesAgg-MTL handles.

A multi-task model is a shared encoder ``h = f(x)`` and one linear head per task group
(docs/methods.md, "The training-loop contract"). A group is declared once and fixes how its targets look, how its
per-task losses are computed and how many tasks it puts on the aggregation axis:

- :class:`Regression` with ``outputs`` outputs: ``outputs`` tasks, squared error (no 1/2);
- :class:`Binary` with ``outputs`` binary tasks: ``outputs`` tasks, BCE with logits;
- :class:`Multiclass` with ``classes`` classes: one task, cross-entropy.

Missing labels. A regression target may be NaN and a binary or multiclass target
:data:`MISSING` (-100, as ``torch.nn.functional.cross_entropy``'s ``ignore_index``): that
example has no label for that task. A task's loss is then the mean over the examples that have
its label, and a task with no label in the batch has loss 0 (with the graph attached, so its
gradient is 0, never NaN); :func:`task_losses` logs once per task when that happens. With no
missing label the losses are computed exactly as before (same operations).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MISSING",
    "Binary",
    "Multiclass",
    "Regression",
    "TaskGroup",
    "check_groups",
    "check_loss_scale",
    "num_tasks",
    "task_kinds",
    "task_losses",
    "task_names",
]


#: The target value of a missing binary or multiclass label (regression: NaN).
MISSING = -100

_log = logging.getLogger("bayesagg")
_said_unlabelled: set[str] = set()


def _masked_mean(group: TaskGroup, example_losses: Tensor, labelled: Tensor) -> Tensor:
    """Return per-column means of ``example_losses`` [B, O] over the ``labelled`` rows: 0 where
    none is labelled (said once per task); the unlabelled entries must already be finite."""
    kept = torch.where(labelled, example_losses, torch.zeros_like(example_losses))
    counts = labelled.sum(dim=0)
    _say_unlabelled(group, counts == 0)
    return kept.sum(dim=0) / counts.clamp_min(1).to(example_losses.dtype)


@dataclass(frozen=True)
class _OutputTasks:
    """A group whose linear head has one output per task (:class:`Regression`, :class:`Binary`)."""

    name: str
    outputs: int = 1
    #: Optional per-task names, one per output (e.g. QM9's ``("mu", "alpha", ...)``,
    #: ChestX-ray14's diseases).
    labels: tuple[str, ...] | None = None

    @property
    def num_tasks(self) -> int:
        return self.outputs

    @property
    def head_outputs(self) -> int:
        return self.outputs


@dataclass(frozen=True)
class Regression(_OutputTasks):
    """``outputs`` regression targets sharing one linear head; targets ``y`` of shape [B, outputs]."""

    kind: Literal["regression"] = "regression"

    def losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the per-output mean squared error over the labelled examples, [outputs]."""
        labelled = ~torch.isnan(target)
        if bool(labelled.all()):  # the plain mean, as before missing labels were possible
            return (prediction - target).pow(2).mean(dim=0)
        return _masked_mean(self, self.example_losses(prediction, target), labelled)

    def example_losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the per-example, per-output squared error, [B, outputs] (0 where missing)."""
        # A missing target is replaced by the prediction before the difference, so no NaN
        # reaches the graph; a present one is taken as it is (the same numbers).
        filled = torch.where(torch.isnan(target), prediction.detach(), target)
        return (prediction - filled).pow(2)


@dataclass(frozen=True)
class Binary(_OutputTasks):
    """``outputs`` binary tasks sharing one linear head; targets ``y`` in {0, 1} of shape [B, outputs]."""

    kind: Literal["binary"] = "binary"

    def losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the per-task mean binary cross-entropy (logits in) over the labelled
        examples, shape [outputs]."""
        labelled = target != MISSING
        if bool(labelled.all()):  # the plain mean, as before missing labels were possible
            return F.binary_cross_entropy_with_logits(
                prediction, target.to(prediction.dtype), reduction="none"
            ).mean(dim=0)
        return _masked_mean(self, self.example_losses(prediction, target), labelled)

    def example_losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the per-example, per-task binary cross-entropy, [B, outputs] (0 where
        missing)."""
        labelled = target != MISSING
        filled = torch.where(labelled, target, torch.zeros_like(target)).to(prediction.dtype)
        losses = F.binary_cross_entropy_with_logits(prediction, filled, reduction="none")
        return torch.where(labelled, losses, torch.zeros_like(losses))


@dataclass(frozen=True)
class Multiclass:
    """One ``classes``-way classification task; targets are class ids of shape [B]."""

    name: str
    classes: int
    kind: Literal["multiclass"] = "multiclass"

    @property
    def num_tasks(self) -> int:
        return 1

    @property
    def head_outputs(self) -> int:
        return self.classes

    def losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the mean cross-entropy over the labelled examples, shape [1] (0 if none)."""
        target = target.long()
        if bool((target == MISSING).all()):
            _say_unlabelled(self, torch.ones(1, dtype=torch.bool))
            return (prediction.sum() * 0).reshape(1) + 0.0  # +0, not -0
        # cross_entropy ignores MISSING (its ignore_index) and averages over the rest.
        return F.cross_entropy(prediction, target, ignore_index=MISSING).reshape(1)

    def example_losses(self, prediction: Tensor, target: Tensor) -> Tensor:
        """Return the per-example cross-entropy, shape [B, 1] (0 where missing)."""
        return F.cross_entropy(
            prediction, target.long(), reduction="none", ignore_index=MISSING
        ).unsqueeze(1)


TaskGroup = Regression | Binary | Multiclass


def check_groups(groups: Sequence[TaskGroup]) -> None:
    """Raise ``ValueError`` if the declared groups are empty, badly sized or share a name."""
    if len(groups) == 0:
        raise ValueError(
            "no task groups declared: give at least one Regression, Binary or Multiclass"
        )
    seen: set[str] = set()
    for g in groups:
        if not isinstance(g, (Regression, Binary, Multiclass)):
            raise TypeError(f"task group {g!r} is not a Regression, Binary or Multiclass")
        if g.name in seen:
            raise ValueError(f"task group name {g.name!r} is declared twice")
        seen.add(g.name)
        size = g.classes if isinstance(g, Multiclass) else g.outputs
        minimum = 2 if isinstance(g, Multiclass) else 1
        if size < minimum:
            raise ValueError(f"task group {g.name!r}: size {size} < {minimum}")
        labels = getattr(g, "labels", None)
        if labels is not None and len(labels) != g.num_tasks:
            raise ValueError(f"task group {g.name!r}: {len(labels)} labels for {g.num_tasks} tasks")


def num_tasks(groups: Sequence[TaskGroup]) -> int:
    """Return K, the number of tasks on the aggregation axis."""
    return sum(g.num_tasks for g in groups)


def task_names(groups: Sequence[TaskGroup]) -> list[str]:
    """Return one name per task: the group's labels, ``group`` for one task, else ``group[i]``."""
    names: list[str] = []
    for g in groups:
        labels = getattr(g, "labels", None)
        if labels is not None:
            names.extend(labels)
        elif g.num_tasks == 1:
            names.append(g.name)
        else:
            names.extend(f"{g.name}[{i}]" for i in range(g.num_tasks))
    return names


def task_kinds(groups: Sequence[TaskGroup]) -> list[str]:
    """Return the kind ("regression", "binary", "multiclass") of each of the K tasks."""
    return [g.kind for g in groups for _ in range(g.num_tasks)]


def task_losses(
    groups: Sequence[TaskGroup], predictions: Sequence[Tensor], targets: Sequence[Tensor]
) -> Tensor:
    """Return the K per-task mean losses, concatenated in group order (graph kept)."""
    if not (len(groups) == len(predictions) == len(targets)):
        raise ValueError(
            f"{len(groups)} task groups but {len(predictions)} predictions and {len(targets)} targets"
        )
    return torch.cat([g.losses(p, t) for g, p, t in zip(groups, predictions, targets, strict=True)])


def _say_unlabelled(group: TaskGroup, empty: Tensor) -> None:
    """Log once per task (per process) that a batch had no label for it (its loss is 0);
    ``empty`` [tasks of the group] flags those tasks."""
    for name, none in zip(task_names([group]), empty.tolist(), strict=True):
        if none and name not in _said_unlabelled:
            _said_unlabelled.add(name)
            _log.warning("task %r has no label in a batch: its loss is 0 there", name)


def check_loss_scale(loss_scale: float | Tensor | None, method: str) -> float:
    """Return ``loss_scale`` as a float (1.0 for None); ValueError unless finite and > 0."""
    if loss_scale is None:
        return 1.0
    value = float(loss_scale)  # a GradScaler keeps its scale as a one-element tensor
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{method}: loss_scale must be finite and > 0, got {value}")
    return value
