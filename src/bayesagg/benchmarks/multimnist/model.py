"""MultiMNIST's model (Sener & Koltun 2018): a LeNet-style encoder, two 10-class heads.

Encoder: Conv(1->10, 5x5) -> MaxPool 2 -> ReLU -> Conv(10->20, 5x5) -> MaxPool 2 -> ReLU ->
Linear(320->50) -> ReLU, so D = 50. The original's heads have a hidden layer; here each head is
one Linear(50->10), because BayesAgg-MTL puts its posterior on a linear last layer.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.tasks import TaskGroup

__all__ = ["LeNetEncoder", "build_model"]


class LeNetEncoder(nn.Module):
    """Return h [B, dim] of 1x28x28 images."""

    def __init__(self, dim: int = 50) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 10, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Conv2d(10, 20, kernel_size=5),
            nn.MaxPool2d(2),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Linear(320, dim), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.features(x))


def build_model(groups: Sequence[TaskGroup], *, dim: int = 50) -> MultiTaskModel:
    """Return the LeNet encoder (D = ``dim``) with one linear head per task group."""
    return MultiTaskModel(LeNetEncoder(dim), linear_heads(groups, dim), dim)
