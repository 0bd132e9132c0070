"""A user's own data-parallel training loop with BayesAgg-MTL or a registry method.

    torchrun --nproc-per-node 2 -m bayesagg.examples.ddp --method bayesagg
    torchrun --nproc-per-node 2 -m bayesagg.examples.ddp --method mgda-ub
    python -m bayesagg.examples.ddp --method bayesagg          # one process

Every process builds the same data, model and method (same seeds), reads its contiguous
1/N slice of every global batch, and runs: forward through ``DistributedDataParallel`` under
``no_sync()``; the method's backward (it all-reduces its own statistics over the default
process group: BayesAgg-MTL's posterior sums, a Gramian, a Jacobian, or the task losses);
:func:`bayesagg.distributed.average_gradients` (the mean over processes of the gradients that
are per-process shares); the optimiser step. Rank 0 prints the epoch's mean training losses
(the same numbers for any number of processes) and the held-out metrics. docs/distributed.md.
"""

from __future__ import annotations

import argparse
import gc
import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from bayesagg import BayesAgg, methods
from bayesagg.distributed import all_reduce_mean, average_gradients, resolve_group
from bayesagg.examples.synthetic import INPUT_DIM, make_data
from bayesagg.metrics import evaluate
from bayesagg.tasks import Binary, Regression, task_losses, task_names

#: Regression and binary groups: their BayesAgg-MTL steps are exact under data parallelism
#: (a multiclass group's sampled moments are equal in distribution only; docs/distributed.md).
GROUPS = (Regression("regression", outputs=2), Binary("binary", outputs=3))


class Model(nn.Module):
    """Encoder (16 -> 64 -> 32, ELU) and one linear head per group; forward gives (h, outputs)."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Linear(INPUT_DIM, 64), nn.ELU(), nn.Linear(64, 32), nn.ELU()
        )
        self.heads = nn.ModuleList([nn.Linear(32, 2), nn.Linear(32, 3)])

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        h = self.encoder(x)
        return h, [head(h) for head in self.heads]


def main(argv: Sequence[str] | None = None) -> list[list[float]]:
    """Train; return the per-epoch mean training losses (rank 0 prints them)."""
    parser = argparse.ArgumentParser(description="data-parallel BayesAgg-MTL example")
    parser.add_argument("--method", default="bayesagg", help="bayesagg or a registry name")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64, help="global batch size")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if "WORLD_SIZE" in os.environ:  # started by torchrun
        dist.init_process_group("gloo")  # "nccl" with one GPU per process (LOCAL_RANK)
    group = resolve_group(None)
    rank = dist.get_rank() if group is not None else 0
    world = dist.get_world_size() if group is not None else 1
    if args.batch_size % world:
        raise SystemExit(f"--batch-size {args.batch_size} is not a multiple of {world} processes")

    data = make_data(num_train=1024, num_test=512, seed=args.seed)
    y_train = data.y_train[:2]  # regression and binary targets
    torch.manual_seed(args.seed)  # the same initialisation in every process
    model = Model()
    ddp = DistributedDataParallel(model) if group is not None else model
    if args.method == "bayesagg":
        agg = BayesAgg(GROUPS, regression_fit="epoch")  # process_group=None: the default group
        extra: list[nn.Parameter] = []
    else:
        method = methods.create(args.method, num_tasks=5)
        extra = method.parameters()
    optimizer = torch.optim.Adam(list(model.parameters()) + extra, lr=1e-3)
    share = args.batch_size // world
    history = []
    for epoch in range(args.epochs):
        order = torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(epoch))
        total, steps = torch.zeros(5), 0
        for start in range(0, len(order) - args.batch_size + 1, args.batch_size):
            idx = order[start : start + args.batch_size][rank * share : (rank + 1) * share]
            x, targets = data.x_train[idx], [y[idx] for y in y_train]
            optimizer.zero_grad(set_to_none=True)
            context = ddp.no_sync() if group is not None else torch.enable_grad()
            with context:  # gradients are averaged below, once the method has filled them
                h, outputs = ddp(x)
            if args.method == "bayesagg":
                losses = agg.backward(h, model.heads, targets)
                shared_done = False
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
                shared_done = method.reduces_shared_gradients()
            skip = list(model.encoder.parameters()) if shared_done else []
            average_gradients(list(model.parameters()) + extra, skip=skip)
            optimizer.step()
            if args.method != "bayesagg" and method.needs_after_step:
                with torch.no_grad():
                    method.after_step(task_losses(GROUPS, model(x)[1], targets))
            total += losses.detach()
            steps += 1
        epoch_losses = all_reduce_mean(total / steps, group)  # the global batches' mean losses
        if args.method == "bayesagg":
            agg.end_epoch()
        else:
            method.end_epoch(epoch_losses)
        history.append(epoch_losses.tolist())
        if rank == 0:
            names = task_names(GROUPS)
            shown = ", ".join(f"{n} {v:.6f}" for n, v in zip(names, epoch_losses, strict=True))
            print(f"epoch {epoch + 1}: train loss {shown}")
    if rank == 0:
        model.eval()
        with torch.no_grad():
            _, outputs = model(data.x_test)
        metrics = evaluate(GROUPS, outputs, list(data.y_test[:2]), regression_metric="mse")
        shown = [f"{k} {v:.4f}" for k, v in metrics.items() if k.endswith(("/mse", "/accuracy"))]
        print("test:", ", ".join(shown))
    if group is not None:
        # DDP's reference cycles would leave it to the interpreter's exit, where freeing it
        # after the process group can abort a gloo process (scripts/studies/ddp_teardown.py).
        del ddp
        gc.collect()
        dist.destroy_process_group()
    return history


if __name__ == "__main__":
    main()
