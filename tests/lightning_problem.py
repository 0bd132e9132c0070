"""The tiny float64 multi-task problem of tests/test_lightning.py, and its Lightning runs.

Also a script: ``python tests/lightning_problem.py OUT --devices 2 --methods a,b`` trains each
method with ``lightning.Trainer(strategy="ddp", devices=2)`` on CPU (gloo) and rank 0 saves the
final weights to ``OUT/<method>.pt``. Lightning's DDP launcher starts the other processes by
running this same command again, which is why the data-parallel test runs it as a script
rather than inside pytest.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from bayesagg import Binary, Multiclass, Regression
from bayesagg.tasks import num_tasks

#: K = 2 + 1 + 1 = 4 tasks of three kinds (BayesAgg-MTL fits the regression head, trains the others).
GROUPS = (Regression("r", outputs=2), Binary("b"), Multiclass("m", classes=3))
K = num_tasks(GROUPS)
EXAMPLES = 64
LR = 0.05

#: Hyper-parameters per method: float64 log-variances for UW; one warm-up epoch for BayesAgg-MTL
#: (so that the later epochs run BayesAgg-MTL proper), with the encoder's Adam state reset at
#: its end (the ``end_warmup`` hook).
OPTIONS: dict[str, dict[str, Any]] = {
    "uw": {"dtype": torch.float64},
    "bayesagg": {"warmup_epochs": 1, "reset_encoder_optimizer": True},
}


def make_data() -> TensorDataset:
    """Inputs [64, 5] and the groups' targets, float64, from one shared latent."""
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(EXAMPLES, 5, generator=gen, dtype=torch.float64)
    z = torch.tanh(x @ torch.randn(5, 3, generator=gen, dtype=torch.float64))
    r = z[:, :2] + 0.1 * torch.randn(EXAMPLES, 2, generator=gen, dtype=torch.float64)
    b = (z[:, 2:3] > 0).double()
    m = z.argmax(dim=1)
    return TensorDataset(x, r, b, m)


def make_parts(seed: int = 0) -> tuple[nn.Module, nn.ModuleList]:
    """A float64 encoder (5 -> 8, tanh) and one linear head per group, seeded."""
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(5, 8), nn.Tanh()).double()
    heads = nn.ModuleList([nn.Linear(8, 2), nn.Linear(8, 1), nn.Linear(8, 3)]).double()
    return encoder, heads


class EpochPermutation(Sampler[int]):
    """A shuffled order that is a function of the epoch (Lightning calls ``set_epoch``)."""

    def __init__(self, size: int, seed: int = 1) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.size, generator=gen).tolist())

    def __len__(self) -> int:
        return self.size


def weights_of(encoder: nn.Module, heads: nn.Module) -> dict[str, Tensor]:
    """The parameters under the keys of MultiTaskModule's state_dict."""
    out = {f"encoder.{k}": v.detach().clone() for k, v in encoder.state_dict().items()}
    out.update({f"heads.{k}": v.detach().clone() for k, v in heads.state_dict().items()})
    return out


def trainer_options() -> dict[str, Any]:
    """A quiet CPU Trainer: no logger, progress bar, summary or default checkpoint."""
    return dict(
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )


def fit_lightning(method: str, *, devices: int, batch_size: int, epochs: int) -> Any:
    """Train ``method`` with a real ``lightning.Trainer``; return the module."""
    import lightning.pytorch as pl

    from bayesagg.lightning import MultiTaskModule

    class CountingModule(MultiTaskModule):
        """Counts the gradient buckets DDP's reducer all-reduces (there must be none)."""

        ddp_reductions = 0

        def on_train_start(self) -> None:
            super().on_train_start()
            ddp = self.trainer.strategy.model
            if isinstance(ddp, torch.nn.parallel.DistributedDataParallel):
                ddp.register_comm_hook(self, _count_then_allreduce)

    encoder, heads = make_parts()
    module = CountingModule(
        encoder, heads, GROUPS, method, method_options=OPTIONS.get(method), lr=LR
    )
    strategy = "ddp" if devices > 1 else "auto"
    trainer = pl.Trainer(devices=devices, strategy=strategy, max_epochs=epochs, **trainer_options())
    data = make_data()
    if devices == 1:
        loader = DataLoader(data, batch_size=batch_size, sampler=EpochPermutation(len(data), 0))
    else:
        # Lightning replaces the sampler with DistributedSampler(shuffle=True, seed=0): the
        # permutation of EpochPermutation(seed=0), of which process r takes every N-th example
        # from the r-th, so the N processes' batches of B/N make up the one-process batch of B.
        loader = DataLoader(data, batch_size=batch_size, shuffle=True)
    trainer.fit(module, loader)
    return module


def _count_then_allreduce(module, bucket):  # type: ignore[no-untyped-def]
    """A DDP communication hook: count the bucket, then DDP's default all-reduce (mean).

    Unannotated: DDP refuses a hook whose annotations are not ``dist.GradBucket`` and
    ``Future[Tensor]`` objects, and this file's annotations are strings.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    module.ddp_reductions += 1
    return allreduce_hook(None, bucket)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--methods", default="bayesagg")
    parser.add_argument("--global-batch", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    for method in args.methods.split(","):
        module = fit_lightning(
            method,
            devices=args.devices,
            batch_size=args.global_batch // args.devices,
            epochs=args.epochs,
        )
        if module.global_rank == 0:
            args.out.mkdir(parents=True, exist_ok=True)
            state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            torch.save(
                {
                    "weights": state,
                    "epoch_losses": module.last_epoch_losses,
                    "ddp_reductions": module.ddp_reductions,
                },
                args.out / f"{method}.pt",
            )


if __name__ == "__main__":
    main(sys.argv[1:])
