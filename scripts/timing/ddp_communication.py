"""Communication per training step of every registry method under data parallelism.

Spawns N gloo processes on CPU (default 2), runs each method on a synthetic multi-task model
(an MLP encoder D_in -> hidden -> D, one regression head with 2 outputs and one binary head:
K = 3 tasks) for a few steps on B/N examples per process, and counts, for one step, the
elements and calls of every torch.distributed collective (``all_reduce``, ``all_gather``,
``broadcast``), split into the method's own statistics and the gradient averaging
(:func:`bayesagg.distributed.average_gradients`). Also times the steps (median), which on a
shared machine is indicative only. Prints a markdown table (docs/distributed.md).

    OMP_NUM_THREADS=1 PYTHONPATH=src python scripts/timing/ddp_communication.py --nproc 2
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch
from torch import nn


def _worker(rank: int, args: argparse.Namespace, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from bayesagg import methods
    from bayesagg.distributed import average_gradients, resolve_group
    from bayesagg.tasks import Binary, Regression, task_losses

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=args.nproc
    )
    counts = {"elements": 0, "calls": 0}
    originals = {}
    for name in ("all_reduce", "all_gather", "broadcast"):
        fn = getattr(dist, name)
        originals[name] = fn

        def counted(*a, _fn=fn, _name=name, **kw):
            tensor = a[1] if _name == "all_gather" else a[0]
            counts["elements"] += tensor.numel()
            counts["calls"] += 1
            return _fn(*a, **kw)

        setattr(dist, name, counted)
    group = resolve_group(None)
    groups = (Regression("r", 2), Binary("b", 1))
    b_local = args.batch // args.nproc
    rows = []
    for name in methods.names():
        torch.manual_seed(0)
        encoder = nn.Sequential(
            nn.Linear(args.d_in, args.hidden), nn.ReLU(), nn.Linear(args.hidden, args.dim)
        )
        heads = nn.ModuleList([nn.Linear(args.dim, 2), nn.Linear(args.dim, 1)])
        kwargs = {"task": 0} if name == "stl" else {"groups": groups} if name == "bayesagg" else {}
        method = methods.create(name, num_tasks=3, **kwargs)
        shared, task = list(encoder.parameters()), list(heads.parameters())
        params = shared + task + list(method.parameters())
        optimizer = torch.optim.SGD(params, lr=1e-3)
        g = torch.Generator().manual_seed(rank)
        seconds, method_counts, sync_counts = [], {}, {}
        for _step in range(args.steps):
            x = torch.randn(b_local, args.d_in, generator=g)
            targets = [
                torch.randn(b_local, 2, generator=g),
                torch.randint(0, 2, (b_local, 1), generator=g).float(),
            ]
            t0 = time.perf_counter()
            counts.update(elements=0, calls=0)
            h = encoder(x)
            losses = task_losses(groups, [head(h) for head in heads], targets)
            optimizer.zero_grad(set_to_none=True)
            method.backward(
                losses,
                shared_parameters=shared,
                task_parameters=task,
                representation=h,
                heads=heads,
                targets=targets,
            )
            method_counts = dict(counts)
            counts.update(elements=0, calls=0)
            skip = shared if method.reduces_shared_gradients() else ()
            average_gradients(params, group, skip=skip)
            sync_counts = dict(counts)
            optimizer.step()
            if method.needs_after_step:
                with torch.no_grad():
                    h = encoder(x)
                    method.after_step(task_losses(groups, [head(h) for head in heads], targets))
                method_counts["elements"] += counts["elements"] - sync_counts["elements"]
            seconds.append(time.perf_counter() - t0)
        rows.append(
            {
                "method": name,
                "space": method.space,
                "method_elements": method_counts["elements"],
                "method_calls": method_counts["calls"],
                "sync_elements": sync_counts["elements"],
                "median_ms": 1000 * statistics.median(seconds[args.warmup :]),
            }
        )
    for name, fn in originals.items():
        setattr(dist, name, fn)
    if rank == 0:
        torch.save(rows, out)
    dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--batch", type=int, default=128, help="global batch B")
    parser.add_argument("--d-in", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dim", type=int, default=64, help="representation width D")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "rows.pt")
        mp.spawn(_worker, args=(args, os.path.join(tmp, "init"), out), nprocs=args.nproc)
        rows = torch.load(out, weights_only=False)
    p = args.d_in * args.hidden + args.hidden + args.hidden * args.dim + args.dim
    p_heads = 3 * args.dim + 3
    print(
        f"N={args.nproc} gloo processes on CPU, global batch B={args.batch}, K=3 tasks, "
        f"D={args.dim}, shared P={p}, heads {p_heads}; elements per step per process"
    )
    print()
    print(
        "| method | space | method's statistics (elements, calls) | gradient averaging | step ms |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['method']} | {r['space']} | {r['method_elements']} ({r['method_calls']}) | "
            f"{r['sync_elements']} | {r['median_ms']:.2f} |"
        )


if __name__ == "__main__":
    main()
