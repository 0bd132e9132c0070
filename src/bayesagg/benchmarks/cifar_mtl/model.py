"""CIFAR-MTL's model (BayesAgg-MTL paper App. B): three conv blocks and a BatchNorm.

3 x [Conv 3x3 with ``channels`` channels and reflect padding, ELU, MaxPool 3], then
BatchNorm2d(channels) and flatten: on 32x32 inputs (32 -> 10 -> 3 -> 1) h has D = channels =
160; 20 binary heads in one group.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.tasks import TaskGroup

__all__ = ["ConvEncoder", "build_model"]


class ConvEncoder(nn.Module):
    """Return h [B, channels] of ``in_channels`` x S x S images (S such that 3 pools reach 1)."""

    def __init__(self, in_channels: int = 3, channels: int = 160) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv2d(
                    in_channels if i == 0 else channels,
                    channels,
                    kernel_size=3,
                    padding=1,
                    padding_mode="reflect",
                ),
                nn.ELU(),
                nn.MaxPool2d(3),
            ]
        layers += [nn.BatchNorm2d(channels), nn.Flatten()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


def build_model(groups: Sequence[TaskGroup], *, channels: int = 160) -> MultiTaskModel:
    """Return the three-block conv encoder (D = ``channels``) with one head per task group."""
    return MultiTaskModel(ConvEncoder(3, channels), linear_heads(groups, channels), channels)
