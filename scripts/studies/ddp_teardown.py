"""How often a gloo process aborts at exit when its DDP model is left to the interpreter's exit.

    .venv/bin/python scripts/studies/ddp_teardown.py --runs 40

``DistributedDataParallel`` holds reference cycles, so a DDP object that goes out of scope is
not freed until the garbage collector runs, which, in a short worker, is the interpreter's
exit, after ``destroy_process_group``. With torch 2.14.1 on a 2-core CPU machine this aborted
one of the two gloo processes ("terminate called without an active exception", SIGABRT) after
every collective had finished, in 7-28 % of the runs (11 of 40 with this script; 0 of 40 with
the DDP object freed first), which made a documentation snippet fail now and then in CI and
can do the same to the runner's ``--nproc`` runs. Freeing the DDP object first (``del ddp``,
``gc.collect()``, then ``destroy_process_group``) is what the library's runner, its example and
docs/distributed.md do. This script starts ``--runs`` two-process groups each way (a DDP model,
one collective, the group destroyed) and prints how many failed.
"""

from __future__ import annotations

import argparse
import gc
import os
import tempfile

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel


def _worker(rank: int, world: int, init_file: str, free_first: bool) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    model = nn.Linear(4, 2)
    ddp = DistributedDataParallel(model)
    with ddp.no_sync():
        ddp(torch.randn(3, 4)).sum().backward()
    for p in model.parameters():
        dist.all_reduce(p.grad)
    if free_first:
        del ddp
        gc.collect()
    dist.destroy_process_group()


def failures(runs: int, free_first: bool) -> int:
    """Return how many of ``runs`` two-process groups ended with a process failing."""
    failed = 0
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as folder:
            try:
                mp.spawn(
                    _worker, args=(2, os.path.join(folder, "rendezvous"), free_first), nprocs=2
                )
            except mp.ProcessExitedException:
                failed += 1
    return failed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.runs} two-process gloo groups each way")
    for free_first, label in ((False, "DDP left to the exit"), (True, "DDP freed first")):
        print(f"{label}: {failures(args.runs, free_first)} of {args.runs} failed", flush=True)


if __name__ == "__main__":
    main()
