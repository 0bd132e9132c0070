"""Your own data-parallel training loop: N processes on CPU (gloo), BayesAgg-MTL or a baseline.

    python examples/ddp_own_loop.py                          # BayesAgg-MTL on 2 processes
    python examples/ddp_own_loop.py --nproc 1                # the same numbers on 1 process
    python examples/ddp_own_loop.py --method mgda-ub         # any registry method

``torch.multiprocessing.spawn`` starts the processes; they meet through a file in a temporary
folder (no port to choose). Every process builds the same data, model and method from the same
seeds, reads its contiguous 1/N slice of every global batch (the same batches as one process
would take), and runs:

1. the forward pass through ``DistributedDataParallel`` under ``no_sync()``: the methods fill
   ``.grad`` themselves (``torch.autograd.grad``), which DDP's reducer does not see;
2. the method's backward, which all-reduces the statistics its weights depend on over the
   default process group (BayesAgg-MTL's posterior sums; a Gramian; the task losses);
3. :func:`bayesagg.distributed.average_gradients`: the mean over the processes of every
   gradient that is a per-process share;
4. the optimiser step, then the hooks (``after_step``, ``end_epoch``) as in one process.

Rank 0 prints the epochs' mean training losses and the test metrics, the same numbers for any
N up to rounding. docs/distributed.md has the details, what is exact and what is not; the
benchmark runner does all of this with ``bayesagg run ... --nproc N``.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import TensorDataset

import bayesagg.methods
from bayesagg import BayesAgg, Binary, Multiclass, Regression
from bayesagg.distributed import all_reduce_mean, average_gradients, resolve_group
from bayesagg.tasks import num_tasks, task_losses, task_names

GROUPS = (
    Regression("position", outputs=2),
    Binary("above_zero"),
    Multiclass("sector", classes=5),
)
K = num_tasks(GROUPS)


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


class Model(nn.Module):
    """A shared MLP encoder and one linear head per group; forward gives (h, head outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(16, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU())
        self.heads = nn.ModuleList([nn.Linear(32, 2), nn.Linear(32, 1), nn.Linear(32, 5)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = self.encoder(x)
        return h, [head(h) for head in self.heads]


def worker(rank: int, world: int, init_file: str, args: argparse.Namespace) -> None:
    """One process: join the group, train on this rank's slices, rank 0 prints."""
    torch.set_num_threads(1)  # the processes share the cores
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train(rank, world, args)
    finally:
        dist.destroy_process_group()


def train(rank: int, world: int, args: argparse.Namespace) -> None:
    """The training loop of one process (the default process group is initialised)."""
    train_set, test_set = make_data(2048, args.seed), make_data(1024, args.seed + 1)
    torch.manual_seed(args.seed)  # the same initialisation (and method state) in every process
    model = Model()
    ddp = DistributedDataParallel(model)
    if args.method == "bayesagg":
        # process_group=None (the default): BayesAgg all-reduces over the default group.
        agg = BayesAgg(GROUPS, s_regression=0.3, s_classification=0.1, warmup_epochs=1)
        extra: list[nn.Parameter] = []
    else:
        method = bayesagg.methods.create(args.method, num_tasks=K)
        extra = method.parameters()  # UW's log-variances; averaged over processes too
    optimizer = torch.optim.Adam([*model.parameters(), *extra], lr=1e-3)
    share = args.batch_size // world  # examples per process and step
    for epoch in range(args.epochs):
        # The same global batches in every process (one seeded permutation per epoch) ...
        order = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(epoch))
        total, steps = torch.zeros(K), 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            # ... of which this process takes its contiguous slice.
            batch = order[start : start + args.batch_size][rank * share : (rank + 1) * share]
            x, *targets = (t[batch] for t in train_set.tensors)
            optimizer.zero_grad(set_to_none=True)
            with ddp.no_sync():  # gradients are averaged below, after the method filled them
                h, outputs = ddp(x)
            skip: list[Tensor] = []
            if args.method == "bayesagg":
                losses = agg.backward(h, model.heads, targets)  # all-reduced posterior sums
            else:
                losses = task_losses(GROUPS, outputs, targets)
                method.backward(
                    losses,
                    shared_parameters=list(model.encoder.parameters()),
                    task_parameters=list(model.heads.parameters()),
                    representation=h,
                    heads=model.heads,
                    targets=targets,
                )
                if method.reduces_shared_gradients():  # parameter-space aggregators
                    skip = list(model.encoder.parameters())  # already the global direction
            average_gradients([*model.parameters(), *extra], skip=skip)
            optimizer.step()
            if args.method != "bayesagg" and method.needs_after_step:  # FAMO
                with torch.no_grad():
                    method.after_step(task_losses(GROUPS, model(x)[1], targets))
            total += losses.detach()
            steps += 1
        # The global batches' mean losses; resolve_group(None) is the default process group
        # (the library's collectives take a resolved group, None meaning no communication).
        epoch_losses = all_reduce_mean(total / steps, resolve_group(None))
        if args.method == "bayesagg":
            agg.end_epoch()  # the prior from the sums of every process
        else:
            method.end_epoch(epoch_losses)
        if rank == 0:
            shown = ", ".join(
                f"{n} {v:.6f}" for n, v in zip(task_names(GROUPS), epoch_losses, strict=True)
            )
            print(f"epoch {epoch + 1}: train loss {shown}", flush=True)
    if rank == 0:  # every process holds the same model; rank 0 evaluates the whole test set
        x, position, above_zero, sector = test_set.tensors
        model.eval()
        with torch.no_grad():
            _, (pred_position, logit_above, logits_sector) = model(x)
        mse = float(((pred_position - position) ** 2).mean())
        above = float(((logit_above > 0).float() == above_zero).float().mean())
        accuracy = float((logits_sector.argmax(dim=1) == sector).float().mean())
        print(
            f"test: position/mse {mse:.4f}, above_zero/accuracy {above:.4f}, "
            f"sector/accuracy {accuracy:.4f}",
            flush=True,
        )


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the options and start ``--nproc`` processes."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes (default 2)")
    parser.add_argument("--method", default="bayesagg", help="bayesagg or a registry name")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.nproc < 1 or args.batch_size % args.nproc:
        parser.error(f"--batch-size {args.batch_size} must be a multiple of --nproc {args.nproc}")
    if args.method not in bayesagg.methods.names():
        parser.error(f"unknown method {args.method!r}; see python3 -m bayesagg list")
    print(f"{args.nproc} process(es), gloo, method {args.method}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        init_file = os.path.join(folder, "rendezvous")
        if args.nproc == 1:  # a group of one, in this process: no second interpreter to start
            worker(0, 1, init_file, args)
        else:
            mp.spawn(worker, args=(args.nproc, init_file, args), nprocs=args.nproc, join=True)


if __name__ == "__main__":
    main()
