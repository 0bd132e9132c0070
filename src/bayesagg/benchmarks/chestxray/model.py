"""ChestX-ray14's model: ResNet-34 -> Linear(512->256) + ELU, 14 binary heads (one group).

The paper starts from ImageNet weights; these machines reach no model hub, so the default is
``weights=None``. On a machine with internet access pass ``weights="IMAGENET1K_V1"`` (the
``--model-option weights=IMAGENET1K_V1`` flag of ``bayesagg run``) to follow the paper. Unlike
the official code, the Linear(512->256) layer is trained (docs/benchmarks.md, "The benchmarks").
"""

from __future__ import annotations

from collections.abc import Sequence

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.benchmarks.utkface.model import resnet_encoder
from bayesagg.tasks import TaskGroup

__all__ = ["build_model"]


def build_model(
    groups: Sequence[TaskGroup], *, dim: int = 256, weights: str | None = None
) -> MultiTaskModel:
    """Return ResNet-34 -> ``dim`` + ELU with one linear head per task group."""
    return MultiTaskModel(resnet_encoder("resnet34", dim, weights), linear_heads(groups, dim), dim)
