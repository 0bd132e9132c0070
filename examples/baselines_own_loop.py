"""Registry methods (baselines and BayesAgg-MTL) in your own training loop, hooks included.

    python examples/baselines_own_loop.py                        # a few seconds per method
    python examples/baselines_own_loop.py --methods ls,famo,pcgrad,bayesagg

Every method of ``bayesagg.methods`` (``python3 -m bayesagg list``) runs in the same loop: the
loop computes the K per-task losses with :func:`bayesagg.tasks.task_losses` and hands them to
``method.backward``, which fills ``.grad``; then the optimiser steps. Three hooks make the
difference between a method and a silent fixed weighting, and the loop calls each of them:

- ``method.parameters()`` go into the optimiser (UW's log-variances; empty for most methods);
- ``method.after_step(losses)`` after every optimiser step when ``method.needs_after_step``
  (FAMO: the same batch's losses after the update);
- ``method.end_epoch(epoch_mean_losses)`` after every epoch (DWA's and IGBv2's weights,
  BayesAgg-MTL's prior refit).

Target shapes, one tensor per group: regression and binary ``[B, O]`` float (binary in {0, 1}),
multiclass ``[B]`` integer class ids. The methods that need extras (``nash-mtl``: cvxpy) come
with ``pip install -e ".[baselines]"``.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

import bayesagg.methods
from bayesagg import Binary, Multiclass, Regression
from bayesagg.methods.base import Method
from bayesagg.tasks import num_tasks, task_losses

#: K = 4 tasks: two regression outputs, one binary task, one 5-class task.
GROUPS = (
    Regression("position", outputs=2),
    Binary("above_zero"),
    Multiclass("sector", classes=5),
)
K = num_tasks(GROUPS)
DEFAULT_METHODS = "ls,uw,famo,dwa,mgda-ub,nash-mtl,bayesagg"


def make_data(num_examples: int, seed: int) -> TensorDataset:
    """Inputs [N, 16] and the three groups' targets from one shared non-linear latent."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(16, 4, generator=torch.Generator().manual_seed(1234))  # same task
    x = torch.randn(num_examples, 16, generator=gen)
    z = torch.tanh(x @ mixing / 2)
    position = z[:, :2] + 0.1 * torch.randn(num_examples, 2, generator=gen)  # [N, 2] float
    above_zero = (z[:, 2:3] > 0).float()  # [N, 1] float in {0, 1}
    angle = torch.atan2(z[:, 3], z[:, 0]) + torch.pi
    sector = (angle / (2 * torch.pi) * 5).long().clamp(max=4)  # [N] integer class ids
    return TensorDataset(x, position, above_zero, sector)


class Model(nn.Module):
    """A shared MLP encoder (16 -> 64 -> 32, ELU) and one linear head per task group."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU())
        self.heads = nn.ModuleList([nn.Linear(32, 2), nn.Linear(32, 1), nn.Linear(32, 5)])

    def outputs(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Return the representation h [B, D] and every head's output on it."""
        h = self.encoder(x)
        return h, [head(h) for head in self.heads]


def create(name: str, warmup_epochs: int) -> Method:
    """Build a registry method for the K tasks.

    Every method takes ``num_tasks``; BayesAgg-MTL also needs the task groups (it fits a
    posterior per head) and takes its own hyper-parameters, here a short warm-up of linear
    scalarisation (docs/bayesagg.md).
    """
    options: dict[str, Any] = {}
    if name in ("bayesagg", "bayesagg-paper"):
        options = {"groups": GROUPS, "warmup_epochs": warmup_epochs}
    return bayesagg.methods.create(name, num_tasks=K, **options)


def train(name: str, epochs: int, batch_size: int, seed: int) -> dict[str, float]:
    """Train one method from the seed's initialisation; return its test metrics."""
    torch.manual_seed(seed)  # the same initialisation and batches for every method
    loader = DataLoader(make_data(2048, seed), batch_size=batch_size, shuffle=True, drop_last=True)
    model = Model()
    method = create(name, warmup_epochs=1)
    # The method's own trainable parameters (UW's log-variances) belong in the optimiser:
    # left out, UW keeps its initial weights and is linear scalarisation (it warns).
    optimizer = torch.optim.Adam([*model.parameters(), *method.parameters()], lr=1e-3)
    shared, task_specific = list(model.encoder.parameters()), list(model.heads.parameters())
    for _ in range(epochs):
        model.train()
        total = torch.zeros(K)
        for x, *targets in loader:
            optimizer.zero_grad()
            h, outputs = model.outputs(x)
            losses = task_losses(GROUPS, outputs, targets)  # [K] per-task means, graph attached
            method.backward(
                losses,
                shared_parameters=shared,
                task_parameters=task_specific,
                representation=h,  # used by the "-ub" methods and BayesAgg-MTL
                heads=model.heads,  # used by BayesAgg-MTL only
                targets=targets,  # used by BayesAgg-MTL only
            )
            optimizer.step()
            if method.needs_after_step:  # FAMO: this batch's losses after the update
                with torch.no_grad():
                    method.after_step(task_losses(GROUPS, model.outputs(x)[1], targets))
            total += losses.detach()
        method.end_epoch(total / len(loader))  # the epoch's mean task losses [K]
    return evaluate(model, make_data(1024, seed + 1))


def evaluate(model: Model, dataset: TensorDataset) -> dict[str, float]:
    """Test metrics: mean MSE of the regression outputs, accuracy of the classification tasks.

    BayesAgg-MTL's regression heads hold the full-data posterior mean written by its
    ``end_epoch()`` (the other methods train them); examples/bayesagg_own_loop.py shows the
    eval-mode refit with ``fit_regression_heads``.
    """
    x, position, above_zero, sector = dataset.tensors
    model.eval()
    with torch.no_grad():
        _, (pred_position, logit_above, logits_sector) = model.outputs(x)
    return {
        "position/mse": float(((pred_position - position) ** 2).mean()),
        "above_zero/accuracy": float(((logit_above > 0).float() == above_zero).float().mean()),
        "sector/accuracy": float((logits_sector.argmax(dim=1) == sector).float().mean()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Train every method of ``--methods``; print and return their test metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default=DEFAULT_METHODS, help="comma-separated names")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.methods.split(",") if n.strip()]
    unknown = [n for n in names if n not in bayesagg.methods.names()]
    if unknown:
        parser.error(f"unknown method(s) {', '.join(unknown)}; see python3 -m bayesagg list")
    torch.set_num_threads(args.threads)

    results = {}
    print("| method | position/mse | above_zero/accuracy | sector/accuracy |")
    print("|---|---|---|---|")
    for name in names:
        results[name] = metrics = train(name, args.epochs, args.batch_size, args.seed)
        print(f"| {name} | " + " | ".join(f"{v:.4f}" for v in metrics.values()) + " |")
    return results


if __name__ == "__main__":
    main()
