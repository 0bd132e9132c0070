"""Linear scalarisation vs BayesAgg-MTL on generated mixed tasks, in well under a minute on a CPU.

``python -m bayesagg.examples.synthetic [--epochs 12] [--seed 0]``

The data: inputs x ~ N(0, I) in R^16, a shared non-linear latent z(x) in R^8, and three task
groups on it - a 2-output regression (outputs of different noise levels), 3 binary tasks and a
4-class task. A small MLP encoder (16 -> 64 -> 32, ELU) with one linear head per group is trained
with each method from the same initialisation, on the same batches, for the same number of
epochs (Adam, lr 1e-3). The table gives per-task test metrics (MSE for regression, accuracy for
classification) and the wall-clock time per training step.

How the BayesAgg-MTL run predicts regression targets is explicit: its regression heads are not
trained; after training they are refitted once on the training set with the encoder in eval mode
(``BayesAgg(regression_fit="refit")`` and :meth:`bayesagg.BayesAgg.fit_regression_heads`;
docs/bayesagg.md, "Which fit regression predictions use"). The linear-scalarisation run trains its regression head by gradient.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from bayesagg.bayes_agg import BayesAgg
from bayesagg.tasks import Binary, Multiclass, Regression, TaskGroup, task_losses, task_names

__all__ = [
    "GROUPS",
    "SyntheticData",
    "heldout_metrics",
    "main",
    "make_data",
    "make_model",
    "table",
    "train",
]

#: The example's task groups: 2 regression outputs, 3 binary tasks, one 4-class task (K = 6).
GROUPS: tuple[TaskGroup, ...] = (
    Regression("regression", outputs=2),
    Binary("binary", outputs=3),
    Multiclass("multiclass", classes=4),
)
INPUT_DIM = 16
LATENT_DIM = 8
FEATURE_DIM = 32


@dataclass(frozen=True)
class SyntheticData:
    """Train and test inputs [N, 16] and per-group targets (regression, binary, multiclass)."""

    x_train: Tensor
    y_train: tuple[Tensor, Tensor, Tensor]
    x_test: Tensor
    y_test: tuple[Tensor, Tensor, Tensor]


def make_data(num_train: int = 2048, num_test: int = 1024, *, seed: int = 0) -> SyntheticData:
    """Return generated data for :data:`GROUPS` (deterministic given ``seed``)."""
    g = torch.Generator().manual_seed(seed)
    n = num_train + num_test
    x = torch.randn(n, INPUT_DIM, generator=g)
    mixing = torch.randn(INPUT_DIM, LATENT_DIM, generator=g) / INPUT_DIM**0.5
    z = torch.tanh(2.0 * x @ mixing) + 0.5 * torch.sin(3.0 * x[:, :LATENT_DIM])
    # Regression: two outputs on z, the second far noisier (tasks of unequal difficulty).
    w_reg = torch.randn(LATENT_DIM, 2, generator=g)
    y_reg = z @ w_reg + torch.tensor([0.1, 1.0]) * torch.randn(n, 2, generator=g)
    y_reg = (y_reg - y_reg[:num_train].mean(0)) / y_reg[:num_train].std(0)
    # Binary: thresholded noisy linear functions of z (and of products, for non-linearity).
    w_bin = torch.randn(LATENT_DIM, 3, generator=g)
    logit_bin = 2.0 * (z @ w_bin) + 2.0 * z[:, :3] * z[:, 3:6]
    y_bin = (logit_bin + 0.5 * torch.randn(n, 3, generator=g) > 0).float()
    # Multiclass: the argmax of noisy class scores (Gumbel noise: a softmax model).
    w_cls = torch.randn(LATENT_DIM, 4, generator=g)
    gumbel = -torch.log(-torch.log(torch.rand(n, 4, generator=g).clamp_min(1e-12)))
    y_cls = (3.0 * (z @ w_cls) + gumbel).argmax(dim=1)
    split = (slice(0, num_train), slice(num_train, n))
    return SyntheticData(
        x_train=x[split[0]],
        y_train=(y_reg[split[0]], y_bin[split[0]], y_cls[split[0]]),
        x_test=x[split[1]],
        y_test=(y_reg[split[1]], y_bin[split[1]], y_cls[split[1]]),
    )


def make_model(seed: int) -> tuple[nn.Module, nn.ModuleList]:
    """Return the encoder (16 -> 64 -> 32, ELU) and the three heads, initialised from ``seed``."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(
        nn.Linear(INPUT_DIM, 64), nn.ELU(), nn.Linear(64, FEATURE_DIM), nn.ELU()
    )
    heads = nn.ModuleList(
        [
            nn.Linear(FEATURE_DIM, 2, bias=False),  # regression, no bias (the paper's code)
            nn.Linear(FEATURE_DIM, 3),
            nn.Linear(FEATURE_DIM, 4),
        ]
    )
    return encoder, heads


def train(
    method: Literal["ls", "bayesagg"],
    data: SyntheticData,
    *,
    epochs: int = 12,
    batch_size: int = 64,
    lr: float = 1e-3,
    seed: int = 0,
    bayesagg_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Return test metrics, train losses per epoch and time per step of one training run.

    ``method="ls"``: the sum of the task losses. ``method="bayesagg"``: :class:`BayesAgg` with
    its defaults (s = 0.85 / 0.1, gamma = 5e-3, deterministic ``"qmc"`` moments), 1 warm-up
    epoch, ``regression_fit="refit"``, updated by ``bayesagg_options``.
    """
    encoder, heads = make_model(seed)
    optimizer = torch.optim.Adam([*encoder.parameters(), *heads.parameters()], lr=lr)
    options = {"warmup_epochs": 1, "regression_fit": "refit"}
    options |= bayesagg_options or {}
    agg = BayesAgg(GROUPS, **options) if method == "bayesagg" else None
    order = torch.Generator().manual_seed(seed)
    n = data.x_train.shape[0]
    step_times: list[float] = []
    epoch_losses: list[list[float]] = []
    for _ in range(epochs):
        permutation = torch.randperm(n, generator=order)
        total = torch.zeros(len(task_names(GROUPS)))
        for start in range(0, n, batch_size):
            index = permutation[start : start + batch_size]
            x = data.x_train[index]
            targets = [y[index] for y in data.y_train]
            began = time.perf_counter()
            optimizer.zero_grad()
            h = encoder(x)
            if agg is None:
                losses = task_losses(GROUPS, [head(h) for head in heads], targets)
                losses.sum().backward()
                losses = losses.detach()
            else:
                losses = agg.backward(h, heads, targets)
            optimizer.step()
            step_times.append(time.perf_counter() - began)
            total += losses * len(index)
        epoch_losses.append((total / n).tolist())
        if agg is not None:
            agg.end_epoch()
    encoder.eval()
    fit = "gradient (linear scalarisation)"
    if agg is not None:
        with torch.no_grad():
            agg.fit_regression_heads(heads, [(encoder(data.x_train), list(data.y_train))])
        fit = agg.regression_fit_source
    with torch.no_grad():
        h = encoder(data.x_test)
        outputs = [head(h) for head in heads]
    return {
        "method": method,
        "metrics": heldout_metrics(outputs, data.y_test),
        "train_losses": epoch_losses,
        "time_per_step_ms": 1e3 * sorted(step_times)[len(step_times) // 2],
        "steps": len(step_times),
        "regression_fit": fit,
        "last_weights": None if agg is None else agg.last_weights.tolist(),
    }


def heldout_metrics(outputs: Sequence[Tensor], targets: Sequence[Tensor]) -> dict[str, float]:
    """Return per-task test MSE (regression) or accuracy (classification), keyed by task name."""
    from bayesagg.metrics import evaluate

    metrics = evaluate(GROUPS, outputs, targets, regression_metric="mse")
    keep = {}
    for name in task_names(GROUPS):
        for metric in ("mse", "accuracy"):
            value = metrics.get(f"{name}/{metric}")
            if value is not None:
                keep[f"{name}/{metric}"] = value
    return keep


def table(results: Sequence[dict[str, Any]]) -> str:
    """Return a markdown table: one row per task metric, one column per method, plus time."""
    names = [r["method"] for r in results]
    lines = ["| task / metric | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for key in results[0]["metrics"]:
        values = " | ".join(f"{r['metrics'][key]:.4f}" for r in results)
        lines.append(f"| {key} | {values} |")
    times = " | ".join(f"{r['time_per_step_ms']:.2f}" for r in results)
    lines.append(f"| time per step (ms, median) | {times} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """Run both methods, print the comparison table, and return their results."""
    parser = argparse.ArgumentParser(
        prog="python -m bayesagg.examples.synthetic", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--epochs", type=int, default=12, help="training epochs (default 12)")
    parser.add_argument("--train", type=int, default=2048, help="training examples")
    parser.add_argument("--test", type=int, default=1024, help="test examples")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    # One thread by default: the tensors are tiny, a second thread mostly adds synchronisation.
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data = make_data(args.train, args.test, seed=args.seed)
    results = [
        train(method, data, epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
        for method in ("ls", "bayesagg")
    ]
    print(
        f"{args.train} training / {args.test} test examples, {args.epochs} epochs, batch "
        f"{args.batch_size}, Adam 1e-3, seed {args.seed}; same initialisation and batches.\n"
        "BayesAgg-MTL: 1 warm-up epoch of linear scalarisation, s = 0.85 (regression) / 0.1 "
        "(classification), gamma = 5e-3, deterministic (qmc) moments.\n"
        f"BayesAgg-MTL regression heads: {results[1]['regression_fit']}.\n"
    )
    print(table(results))
    return results


if __name__ == "__main__":
    main()
