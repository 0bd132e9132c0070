"""Fashion-MTL's model: CIFAR-MTL's conv encoder at Fashion-MNIST scale (a stand-in).

Not a published model. It keeps CIFAR-MTL's recipe (3 x [Conv 3x3 reflect, ELU, MaxPool 3],
BatchNorm2d, flatten) on 1x28x28 inputs (28 -> 9 -> 3 -> 1), with 64 channels by default, so
D = 64; the 10 one-vs-rest binary tasks share one linear head.
"""

from __future__ import annotations

from collections.abc import Sequence

from bayesagg.benchmarks.cifar_mtl.model import ConvEncoder
from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.tasks import TaskGroup

__all__ = ["build_model"]


def build_model(groups: Sequence[TaskGroup], *, channels: int = 64) -> MultiTaskModel:
    """Return the conv encoder on 1-channel images (D = ``channels``), one head per group."""
    return MultiTaskModel(ConvEncoder(1, channels), linear_heads(groups, channels), channels)
