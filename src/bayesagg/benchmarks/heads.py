"""The model shape every benchmark shares: a shared encoder and one linear head per task group."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from bayesagg.tasks import Multiclass, TaskGroup

__all__ = ["MultiTaskModel", "linear_heads"]


class MultiTaskModel(nn.Module):
    """A shared ``encoder`` (x -> h [B, D]) and one linear head per task group."""

    def __init__(self, encoder: nn.Module, heads: nn.ModuleList, dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.heads = heads
        self.dim = dim

    def forward(self, x: Any) -> tuple[Tensor, list[Tensor]]:
        """Return the representation h [B, D] and each group's prediction."""
        h = self.encoder(x)
        return h, [head(h) for head in self.heads]


def linear_heads(groups: Sequence[TaskGroup], dim: int) -> nn.ModuleList:
    """Return one ``nn.Linear(dim, outputs)`` per task group (BayesAgg-MTL needs linear heads)."""
    heads = []
    for g in groups:
        out = g.classes if isinstance(g, Multiclass) else g.outputs
        heads.append(nn.Linear(dim, out))
    return nn.ModuleList(heads)
