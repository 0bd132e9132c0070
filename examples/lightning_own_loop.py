"""Any registry method (BayesAgg-MTL by default) trained by PyTorch Lightning's ``Trainer``.

    python examples/lightning_own_loop.py                      # BayesAgg-MTL, a few seconds
    python examples/lightning_own_loop.py --method famo        # any registry method
    python examples/lightning_own_loop.py --devices 2          # Lightning's DDP, 2 CPU processes

Needs the ``lightning`` extra (``pip install -e ".[lightning]"``). The model is a LightningModule
built on :class:`bayesagg.lightning.MultiTaskModule`, which runs the method's training step
(manual optimisation: the method fills the gradients, the optimiser steps, FAMO's
``after_step``), ``end_epoch`` at each epoch's end before validation, and saves the method's
state in Lightning's checkpoints. This script adds what any LightningModule adds: a validation
step that logs a metric, a ``ModelCheckpoint`` on it, and, for BayesAgg-MTL, the training set in
order for the eval-mode refit of its regression heads (``refit_batches``).

With ``--devices N`` Lightning's DDP strategy starts N processes (gloo on CPU) and its
``DistributedSampler`` gives each 1/N of every shuffled global batch; one process reads the
same permutation (``DistributedSampler`` with one replica), so ``--devices 1`` and ``--devices
2`` print the same numbers up to rounding (docs/distributed.md; ``bayesagg.lightning``'s
docstring says why DDP does not reduce the gradients twice).
"""

from __future__ import annotations

import argparse
import tempfile
import warnings
from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.data.distributed import DistributedSampler

import bayesagg.methods
from bayesagg import Binary, Multiclass, Regression
from bayesagg.lightning import MultiTaskModule
from bayesagg.tasks import task_losses, task_names

#: K = 4 tasks: two regression outputs, one binary task, one 5-class task.
GROUPS = (
    Regression("position", outputs=2),
    Binary("above_zero"),
    Multiclass("sector", classes=5),
)


def make_data(num_examples: int, seed: int) -> TensorDataset:
    """Inputs [N, 16] and the groups' targets: [N, 2] float, [N, 1] in {0, 1}, [N] class ids."""
    gen = torch.Generator().manual_seed(seed)
    mixing = torch.randn(16, 4, generator=torch.Generator().manual_seed(1234))  # same task
    x = torch.randn(num_examples, 16, generator=gen)
    z = torch.tanh(x @ mixing / 2)
    position = z[:, :2] + 0.1 * torch.randn(num_examples, 2, generator=gen)
    above_zero = (z[:, 2:3] > 0).float()
    angle = torch.atan2(z[:, 3], z[:, 0]) + torch.pi
    sector = (angle / (2 * torch.pi) * 5).long().clamp(max=4)
    return TensorDataset(x, position, above_zero, sector)


class Model(MultiTaskModule):
    """A shared MLP encoder (16 -> 64 -> 32, ELU), one linear head per group, and validation."""

    def __init__(self, method: str, train_set: TensorDataset, lr: float) -> None:
        encoder = nn.Sequential(nn.Linear(16, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU())
        heads = [nn.Linear(32, 2), nn.Linear(32, 1), nn.Linear(32, 5)]
        # BayesAgg-MTL fits a posterior per head and starts after a warm-up of linear
        # scalarisation (docs/bayesagg.md); the other methods take their defaults.
        options = {"warmup_epochs": 1} if method.startswith("bayesagg") else None
        super().__init__(encoder, heads, GROUPS, method, method_options=options, lr=lr)
        self.train_set = train_set

    def refit_batches(self) -> Any:
        """The training set in order: BayesAgg-MTL refits its regression heads on it (eval mode)."""
        if not self.method.name.startswith("bayesagg"):
            return None  # only BayesAgg-MTL fits heads to the training set
        sampler = None
        if self.trainer.world_size > 1:  # this process's share; the fit sums over processes
            sampler = DistributedSampler(self.train_set, shuffle=False)
        return DataLoader(self.train_set, batch_size=256, sampler=sampler)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, targets = self.split_batch(batch)
        losses = task_losses(self.groups, self(x)[1], targets)
        self.log("val_loss", losses.sum(), sync_dist=True)  # ModelCheckpoint monitors it

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()  # keep the base class's hook
        if self.global_rank == 0 and self.last_epoch_losses is not None:
            shown = ", ".join(
                f"{n} {v:.6f}"
                for n, v in zip(task_names(self.groups), self.last_epoch_losses, strict=True)
            )
            print(f"epoch {self.current_epoch + 1}: train loss {shown}", flush=True)


def evaluate(model: Model, dataset: TensorDataset) -> dict[str, float]:
    """Test metrics: mean MSE of the regression outputs, accuracy of the classification tasks."""
    x, position, above_zero, sector = dataset.tensors
    model.eval()
    with torch.no_grad():
        _, (pred_position, logit_above, logits_sector) = model(x)
    return {
        "position/mse": float(((pred_position - position) ** 2).mean()),
        "above_zero/accuracy": float(((logit_above > 0).float() == above_zero).float().mean()),
        "sector/accuracy": float((logits_sector.argmax(dim=1) == sector).float().mean()),
    }


def main(argv: Sequence[str] | None = None) -> dict[str, float] | None:
    """Train with Lightning; rank 0 prints the epochs and the test metrics and returns them."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default="bayesagg", help="a registry name (bayesagg list)")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--devices", type=int, default=1, help="processes (DDP when > 1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.method not in bayesagg.methods.names():
        parser.error(f"unknown method {args.method!r}; see python3 -m bayesagg list")
    if args.devices < 1 or args.batch_size % args.devices:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --devices")
    torch.set_num_threads(1)  # small matrices; more threads are slower on shared cores
    # In-memory tensors need no loader workers: Lightning's advice to add some is noise here.
    warnings.filterwarnings("ignore", ".*does not have many workers.*")

    torch.manual_seed(args.seed)  # the same initialisation in every process
    train_set, val_set = make_data(2048, args.seed), make_data(512, args.seed + 1)
    model = Model(args.method, train_set, lr=1e-3)
    share = args.batch_size // args.devices
    if args.devices == 1:  # the permutation each epoch that Lightning's DDP sampler draws
        train = DataLoader(train_set, share, sampler=DistributedSampler(train_set, 1, 0))
    else:  # Lightning puts its DistributedSampler (shuffled, seed 0) in this loader
        train = DataLoader(train_set, share, shuffle=True)
    with tempfile.TemporaryDirectory() as folder:
        best = pl.callbacks.ModelCheckpoint(dirpath=folder, monitor="val_loss")
        trainer = pl.Trainer(
            accelerator="cpu",
            devices=args.devices,
            strategy="ddp" if args.devices > 1 else "auto",
            max_epochs=args.epochs,
            callbacks=[best],
            logger=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        trainer.fit(model, train, DataLoader(val_set, batch_size=256))
        if trainer.global_rank != 0:
            return None
        print(f"best checkpoint: {best.best_model_path.rsplit('/', 1)[-1]} (method state inside)")
    metrics = evaluate(model, make_data(1024, args.seed + 2))
    print("test: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), flush=True)
    return metrics


if __name__ == "__main__":
    main()
