"""UTKFace's model: a ResNet-18 from scratch whose last layer is Linear(512->256) + ELU.

Paper App. B and the authors' trainer (docs/benchmarks.md, "The benchmarks"): torchvision ResNet-18 (no pre-training), ``fc`` replaced by
Linear(512->256) followed by ELU, so h has D = 256; heads Linear(256->1) for age,
Linear(256->1) for gender and Linear(256->5) for ethnicity.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.tasks import TaskGroup

__all__ = ["build_model", "resnet_encoder"]


def resnet_encoder(arch: str = "resnet18", dim: int = 256, weights: str | None = None) -> nn.Module:
    """Return a torchvision ResNet whose ``fc`` is Linear(features -> dim) + ELU."""
    import torchvision

    net = getattr(torchvision.models, arch)(weights=weights)
    net.fc = nn.Sequential(nn.Linear(net.fc.in_features, dim), nn.ELU())
    return net


def build_model(
    groups: Sequence[TaskGroup], *, dim: int = 256, weights: str | None = None
) -> MultiTaskModel:
    """Return ResNet-18 -> ``dim`` + ELU (``weights=None``: from scratch, as the paper)."""
    return MultiTaskModel(resnet_encoder("resnet18", dim, weights), linear_heads(groups, dim), dim)
