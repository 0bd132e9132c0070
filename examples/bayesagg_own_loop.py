"""BayesAgg-MTL in your own training loop: regression, binary and multiclass tasks together.

    python examples/bayesagg_own_loop.py                 # a few seconds on one CPU core
    python examples/bayesagg_own_loop.py --epochs 20 --warmup-epochs 4

A complete loop to copy: synthetic data in a ``DataLoader`` that yields the inputs and one
target tensor per task group, a shared encoder with one ``nn.Linear`` head per group, warm-up
epochs of linear scalarisation, then BayesAgg-MTL, ``end_epoch()`` after every epoch, and an
evaluation on held-out data. What each step means: docs/bayesagg.md.

Target shapes, one tensor per group in the order of the groups and the heads:

- regression: ``[B, O]`` float (O outputs of the group),
- binary: ``[B, O]`` float in {0, 1} (O binary tasks of the group),
- multiclass: ``[B]`` integer class ids (``torch.long``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from bayesagg import BayesAgg, Binary, Multiclass, Regression

#: Three task groups, K = 2 + 1 + 1 = 4 tasks: two regression outputs, one binary task and one
#: 5-class task (names are free; they label the losses and weights).
GROUPS = (
    Regression("position", outputs=2),
    Binary("above_zero"),
    Multiclass("sector", classes=5),
)


def make_data(num_examples: int, seed: int) -> TensorDataset:
    """Inputs [N, 16] and the three groups' targets, all computed from one shared latent.

    The tasks share a non-linear latent z(x) in R^4, so a shared encoder helps every task;
    this is what makes the example multi-task rather than three unrelated problems.
    """
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(16, 4, generator=torch.Generator().manual_seed(1234))  # same task
    x = torch.randn(num_examples, 16, generator=gen)
    z = torch.tanh(x @ mixing / 2)
    position = z[:, :2] + 0.1 * torch.randn(num_examples, 2, generator=gen)  # [N, 2] float
    above_zero = (z[:, 2:3] > 0).float()  # [N, 1] float in {0, 1}
    angle = torch.atan2(z[:, 3], z[:, 0]) + torch.pi  # in [0, 2 pi]
    sector = (angle / (2 * torch.pi) * 5).long().clamp(max=4)  # [N] integer class ids
    return TensorDataset(x, position, above_zero, sector)


class Model(nn.Module):
    """A shared MLP encoder (16 -> 64 -> 32, ELU) and one linear head per task group."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU())
        # A ModuleList, so that heads.parameters() reaches the optimiser and .eval() the heads.
        self.heads = nn.ModuleList([nn.Linear(32, 2), nn.Linear(32, 1), nn.Linear(32, 5)])


def evaluate(model: Model, dataset: TensorDataset) -> dict[str, float]:
    """Test metrics: MSE per regression output, accuracy of the binary and multiclass tasks."""
    x, position, above_zero, sector = dataset.tensors
    model.eval()
    with torch.no_grad():
        h = model.encoder(x)
        pred_position, logit_above, logits_sector = (head(h) for head in model.heads)
    mse = ((pred_position - position) ** 2).mean(dim=0)
    return {
        "position[0]/mse": float(mse[0]),
        "position[1]/mse": float(mse[1]),
        "above_zero/accuracy": float(((logit_above > 0).float() == above_zero).float().mean()),
        "sector/accuracy": float((logits_sector.argmax(dim=1) == sector).float().mean()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float]:
    """Train, print the epochs and the test metrics, and return the metrics."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument(
        "--warmup-epochs",
        type=int,
        default=2,
        help="epochs of linear scalarisation before BayesAgg-MTL starts (must be < --epochs)",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train", type=int, default=2048, help="training examples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: the matrices are small, and more threads are slower "
        "on shared cores)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.warmup_epochs < args.epochs:
        # Otherwise every epoch is warm-up and the run is plain linear scalarisation.
        parser.error("--warmup-epochs must be at least 0 and below --epochs")
    torch.set_num_threads(args.threads)

    torch.manual_seed(args.seed)
    train_set, test_set = make_data(args.train, args.seed), make_data(1024, args.seed + 1)
    # Yields (x, position, above_zero, sector): the loop below unpacks x, *targets.
    loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True)
    model = Model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # The first warmup_epochs epochs are linear scalarisation (the plain sum of the task
    # losses, through the encoder and every head): the posteriors of BayesAgg-MTL are fitted
    # on the encoder's features, so it starts once these mean something. The paper's
    # settings (s, gamma, warm-up) for each benchmark: docs/bayesagg.md.
    agg = BayesAgg(
        GROUPS,
        s_regression=0.3,
        s_classification=0.1,
        gamma=5e-3,
        warmup_epochs=args.warmup_epochs,
    )
    for epoch in range(args.epochs):
        phase = "warm-up (LS)" if agg.in_warmup else "BayesAgg-MTL"
        model.train()
        total = torch.zeros(agg.num_tasks)
        for x, *targets in loader:
            optimizer.zero_grad()
            h = model.encoder(x)  # shared representation [B, D], part of the graph
            # Fills the .grad of the encoder and of the classification heads (all heads during
            # warm-up); returns the K per-task mean losses, detached, for logging.
            losses: Tensor = agg.backward(h, model.heads, targets)
            optimizer.step()
            total += losses
        # Refits the full-data prior of the next epoch's batch posteriors and, from the last
        # warm-up epoch on, writes its posterior mean into the regression heads.
        agg.end_epoch()
        shown = ", ".join(
            f"{n} {v:.4f}" for n, v in zip(agg.task_names, total / len(loader), strict=True)
        )
        print(f"epoch {epoch + 1} {phase}: train loss {shown}")
    if agg.last_weights is not None:
        weights = ", ".join(f"{v:.3f}" for v in agg.last_weights.tolist())
        print(f"task weights of the last step: {weights}")

    # Evaluation. The optimiser never trains the regression heads: they hold the full-data
    # posterior mean of the last epoch's (training-mode, drifting) features. Refitting them on
    # the final encoder's eval-mode features costs one pass over the training set and is the
    # cleaner choice (docs/bayesagg.md, "Which fit regression predictions use").
    print("test, regression heads from end_epoch():", _shown(evaluate(model, test_set)))
    model.eval()
    with torch.no_grad():
        features = ((model.encoder(x), targets) for x, *targets in loader)
        agg.fit_regression_heads(model.heads, features)
    metrics = evaluate(model, test_set)
    print(f"test, regression heads {agg.regression_fit_source}:", _shown(metrics))
    return metrics


def _shown(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())


if __name__ == "__main__":
    main()
