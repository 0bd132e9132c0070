"""One torch thread against torch's default, side by side in one process, on this project's steps.

    nice -n 10 .venv/bin/python scripts/timing/threads.py                 # as the machine is now
    nice -n 10 .venv/bin/python scripts/timing/threads.py --busy 2        # with 2 spinning processes
    .venv/bin/python scripts/timing/threads.py --threads 1,2,4 --repeats 30 --sizes qm9,utkface

Why: torch starts one intra-op thread per core in every process. Multi-task steps are made of
small operations (per-task heads, K x K Gramians, BayesAgg-MTL's posteriors of width D + 1),
each too small to share among threads, so a team of threads mostly waits for itself, and on
cores shared with other work (other runs, ``--nproc`` processes) a descheduled thread stalls
every operation. The ``--threads`` default of the ``bayesagg`` commands rests on this
comparison (src/bayesagg/runner/threads.py).

What is timed, for every thread count in ``--threads`` (default: 1 and torch's default in this
process, i.e. ``OMP_NUM_THREADS`` or the physical cores):

- ``bayesagg step <size>``: ``BayesAgg.backward(h, heads, targets)`` on a leaf ``h`` at the
  paper's sizes (as scripts/timing/step_time.py: prior fitted on 20 earlier batches), the small
  linear algebra alone;
- ``multimnist <method> step``: one whole training step of the MultiMNIST LeNet (batch 256,
  random images): forward, task losses, ``method.backward``, Adam step, as the runner does.

Side by side: each repeat times one step at every thread count in turn, so that all counts see
the same load; the table gives the median of ``--repeats`` steps after ``--warmup`` and each
count's ratio to the first. ``--busy N`` runs N processes that spin on the CPU meanwhile (a
loaded machine, reproducibly); the load average before timing is printed with the table.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch

from bayesagg import methods
from bayesagg.benchmarks import registry
from bayesagg.tasks import task_losses
from step_time import SIZES, random_targets, setup  # scripts/timing/step_time.py

#: torch's own default in this process, read before anything changes it.
TORCH_DEFAULT = torch.get_num_threads()


def _spin(stop: multiprocessing.synchronize.Event) -> None:
    """Keep one core busy until ``stop`` is set."""
    x = 0
    while not stop.is_set():
        for _ in range(100_000):
            x += 1


@contextmanager
def busy(n: int) -> Iterator[None]:
    """Run ``n`` spinning processes for the duration of the body (stopped and joined after)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    workers = [context.Process(target=_spin, args=(stop,), daemon=True) for _ in range(n)]
    for w in workers:
        w.start()
    try:
        if workers:
            time.sleep(1.0)  # let them reach the CPU
        yield
    finally:
        stop.set()
        for w in workers:
            w.join(timeout=10)


def bayesagg_step(name: str) -> Callable[[], None]:
    """Return one BayesAgg-MTL backward at the size ``name`` (the small linear algebra)."""
    size = next(s for s in SIZES if s.name == name)
    agg, heads, h, targets = setup(size, "qmc")

    def step() -> None:
        h.grad = None
        agg.backward(h, heads, targets)

    return step


def multimnist_step(method_name: str, batch: int = 256) -> Callable[[], None]:
    """Return one whole MultiMNIST training step (LeNet, batch ``batch``) with ``method_name``."""
    torch.manual_seed(0)
    spec = registry.get("multimnist")
    groups = spec.groups
    model = spec.build_model(groups)
    kwargs = {"groups": groups} if method_name.startswith("bayesagg") else {}
    method = methods.create(method_name, num_tasks=sum(g.num_tasks for g in groups), **kwargs)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=g)
    targets = random_targets(groups, batch, g)

    def step() -> None:
        h, outputs = model(x)
        losses = task_losses(groups, outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        method.backward(
            losses,
            shared_parameters=list(model.encoder.parameters()),
            task_parameters=list(model.heads.parameters()),
            representation=h,
            heads=model.heads,
            targets=targets,
        )
        optimizer.step()

    return step


def side_by_side(
    step: Callable[[], None], counts: Sequence[int], repeats: int, warmup: int
) -> list[float]:
    """Return the median ms of ``step`` at each thread count, the counts interleaved."""
    for n in counts:
        torch.set_num_threads(n)
        for _ in range(warmup):
            step()
    times: dict[int, list[float]] = {n: [] for n in counts}
    for _ in range(repeats):
        for n in counts:
            torch.set_num_threads(n)
            began = time.perf_counter()
            step()
            times[n].append(time.perf_counter() - began)
    return [1e3 * statistics.median(times[n]) for n in counts]


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--threads",
        default=f"1,{TORCH_DEFAULT}",
        help=f"comma-separated thread counts, the first is the baseline (1,{TORCH_DEFAULT})",
    )
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per count (15)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per count (3)")
    parser.add_argument("--sizes", default="qm9,utkface,multimnist", help="BayesAgg step sizes")
    parser.add_argument(
        "--models", default="ls,bayesagg", help="methods of the MultiMNIST step ('' for none)"
    )
    parser.add_argument("--batch", type=int, default=256, help="MultiMNIST batch (256)")
    parser.add_argument("--busy", type=int, default=0, help="spinning processes meanwhile (0)")
    args = parser.parse_args(argv)
    counts = [int(t) for t in args.threads.split(",") if t.strip()]
    if len(counts) < 2 or min(counts) < 1 or args.repeats < 1 or args.warmup < 0:
        parser.error("need two or more thread counts >= 1, --repeats >= 1, --warmup >= 0")
    steps: list[tuple[str, Callable[[], Callable[[], None]]]] = [
        (f"bayesagg step {name}", lambda name=name: bayesagg_step(name))
        for name in args.sizes.split(",")
        if name
    ] + [
        (f"multimnist {m} step (B {args.batch})", lambda m=m: multimnist_step(m, args.batch))
        for m in args.models.split(",")
        if m
    ]
    rows: list[dict[str, object]] = []
    previous = torch.get_num_threads()
    with busy(args.busy):
        load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
        print(
            f"torch {torch.__version__}, {os.cpu_count()} cores, load average {load}, "
            f"{args.busy} spinning processes; torch's default here: {TORCH_DEFAULT} threads; "
            f"median of {args.repeats} steps after {args.warmup}, counts interleaved"
        )
        base = counts[0]
        print(
            "| step | "
            + " | ".join(f"{n} thread{'s' if n > 1 else ''} (ms)" for n in counts)
            + " | "
            + " | ".join(f"{n} / {base}" for n in counts[1:])
            + " |"
        )
        print("|---|" + "---|" * (2 * len(counts) - 1))
        for label, build in steps:
            ms = side_by_side(build(), counts, args.repeats, args.warmup)
            ratios = [m / ms[0] for m in ms[1:]]
            print(
                f"| {label} | "
                + " | ".join(f"{m:.2f}" for m in ms)
                + " | "
                + " | ".join(f"{r:.2f}x" for r in ratios)
                + " |",
                flush=True,
            )
            rows.append({"step": label, "threads": counts, "ms": ms, "ratios": ratios})
    torch.set_num_threads(previous)
    return rows


if __name__ == "__main__":
    main()
