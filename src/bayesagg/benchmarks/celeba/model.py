"""CelebA's model (Sener & Koltun 2018): a ResNet-18 encoder, 40 linear attribute heads.

The encoder is torchvision's ResNet-18 without its classifier (h = the 512 pooled features);
the 40 binary attributes share one linear head of 40 outputs (one Binary group).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.tasks import TaskGroup

__all__ = ["build_model"]


def build_model(groups: Sequence[TaskGroup], *, weights: str | None = None) -> MultiTaskModel:
    """Return ResNet-18 (``fc`` removed, D = 512) with one linear head per task group."""
    import torchvision

    net = torchvision.models.resnet18(weights=weights)
    dim = net.fc.in_features
    net.fc = nn.Identity()
    return MultiTaskModel(net, linear_heads(groups, dim), dim)
