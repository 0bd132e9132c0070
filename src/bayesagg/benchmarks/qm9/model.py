"""QM9's message-passing network (Gilmer et al. 2017 as used by Nash-MTL and BayesAgg-MTL).

As in Nash-MTL's QM9 code (summarised in docs/benchmarks.md, "The benchmarks"):
Linear(11->64)+ReLU; three rounds of one shared NNConv(64, 64; edge network
5->128->64*64, mean aggregation) followed by a GRU(64, 64); Set2Set(64, 3 steps) -> 128;
Linear(128->64)+ReLU is the shared representation h (D = 64). One Linear(64->11) head for the
regression group (BayesAgg-MTL fits one Bayesian linear layer per group).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.nn.functional as F
from torch import Tensor, nn

from bayesagg.benchmarks.heads import MultiTaskModel, linear_heads
from bayesagg.benchmarks.pyg import torch_geometric
from bayesagg.tasks import TaskGroup

__all__ = ["MPNNEncoder", "build_model"]


class MPNNEncoder(nn.Module):
    """Return h [B, dim] of a batch of molecular graphs (a PyG ``Batch``)."""

    def __init__(
        self, num_features: int = 11, edge_dim: int = 5, dim: int = 64, rounds: int = 3
    ) -> None:
        super().__init__()
        nn_pyg = torch_geometric().nn
        NNConv, Set2Set = nn_pyg.NNConv, nn_pyg.Set2Set

        self.rounds = rounds
        self.lin0 = nn.Linear(num_features, dim)
        edge_net = nn.Sequential(nn.Linear(edge_dim, 128), nn.ReLU(), nn.Linear(128, dim * dim))
        self.conv = NNConv(dim, dim, edge_net, aggr="mean")
        self.gru = nn.GRU(dim, dim)
        self.set2set = Set2Set(dim, processing_steps=3)
        self.lin1 = nn.Linear(2 * dim, dim)

    def forward(self, data: Any) -> Tensor:
        out = F.relu(self.lin0(data.x.float()))
        hidden = out.unsqueeze(0)
        # One NNConv and one GRU, shared across the message-passing rounds.
        for _ in range(self.rounds):
            message = F.relu(self.conv(out, data.edge_index, data.edge_attr.float()))
            out, hidden = self.gru(message.unsqueeze(0), hidden)
            out = out.squeeze(0)
        pooled = self.set2set(out, data.batch)
        return F.relu(self.lin1(pooled))


def build_model(
    groups: Sequence[TaskGroup], *, dim: int = 64, edge_dim: int = 5, num_features: int = 11
) -> MultiTaskModel:
    """Return the MPNN encoder (D = ``dim``) with one linear head per task group."""
    encoder = MPNNEncoder(num_features=num_features, edge_dim=edge_dim, dim=dim)
    return MultiTaskModel(encoder, linear_heads(groups, dim), dim)
