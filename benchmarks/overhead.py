"""Time per training step of every method, as a ratio to linear scalarisation (LS).

For each runnable benchmark (its data is found), with the real model and the protocol's batch
size, every method runs ``--steps`` whole training steps (forward, method backward, optimiser
step: ``bayesagg.runner.train.training_step``, exactly the runner's step) on the same fixed
batches after ``--warmup`` untimed steps; the median is reported and divided by LS's median.
LS is timed first and last, and the ratio uses their mean, so a machine whose speed drifts
during the measurement shows it (the two LS medians are printed).

BayesAgg-MTL runs without warm-up (every timed step is a BayesAgg-MTL step) with the protocol's
settings and the default moment estimator. Targets: <= 1.10x LS on QM9, <= 1.5x on Fashion-MTL.

    python benchmarks/overhead.py --quick                 # a few steps, LS/BayesAgg/MGDA-UB/Nash-MTL
    python benchmarks/overhead.py --benchmarks qm9,fashion-mtl --steps 30
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from bayesagg import methods
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.runner.hparams import protocol_hparams
from bayesagg.runner.train import make_loader, make_optimizer, split_batch, training_step
from bayesagg.tasks import Regression, num_tasks

QUICK_METHODS = ("ls", "bayesagg", "mgda-ub", "nash-mtl")


def _batches(spec: Any, protocol: Any, count: int, seed: int, data_dir: str | None) -> list[Any]:
    """Return ``count`` training batches (targets standardised where the benchmark does)."""
    splits = spec.load(
        data_dir, seed=seed, limit=protocol.batch_size * count, **dict(protocol.data_options)
    )
    loader = make_loader(spec, splits.train, protocol.batch_size, shuffle=True, seed=seed)
    groups = spec.groups_for(protocol)
    out = []
    for batch in loader:
        x, targets = split_batch(spec, groups, batch, torch.device("cpu"))
        for i, g in enumerate(groups):
            if isinstance(g, Regression) and spec.standardise_targets:
                targets[i] = (targets[i] - targets[i].mean(0)) / targets[i].std(0).clamp_min(1e-8)
        out.append((x, targets))
        if len(out) == count:
            break
    if len(out) < count:
        out = (out * count)[:count]
    return out


def time_method(
    spec: Any, protocol: Any, name: str, batches: list[Any], warmup: int, seed: int
) -> list[float]:
    """Return the seconds of each timed training step of method ``name``."""
    groups = spec.groups_for(protocol)
    torch.manual_seed(seed)
    model = spec.build_model(groups, **dict(protocol.model_options))
    kwargs: dict[str, Any] = {}
    if name == "bayesagg":
        kwargs = protocol_hparams("bayesagg", protocol.bayesagg)
        kwargs["warmup_epochs"] = 0
        kwargs["groups"] = groups
    method = methods.create(name, num_tasks=num_tasks(groups), **kwargs)
    optimizer = make_optimizer(model, method, protocol)
    model.train()
    times = []
    for i, (x, targets) in enumerate(batches):
        t0 = time.perf_counter()
        training_step(model, method, optimizer, groups, x, targets)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", help="comma-separated (default: every runnable one)")
    parser.add_argument("--methods", help="comma-separated (default: all but stl)")
    parser.add_argument("--protocol", default="paper", help="batch size and data options from it")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--quick", action="store_true", help="3 steps, 1 warm-up, 4 methods")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.warmup = 3, 1
    names = args.benchmarks.split(",") if args.benchmarks else registry.names()
    chosen = (
        args.methods.split(",")
        if args.methods
        else (list(QUICK_METHODS) if args.quick else [m for m in methods.names() if m != "stl"])
    )
    if "ls" in chosen:
        chosen.remove("ls")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, protocol {args.protocol}")
    for bench in names:
        spec = registry.get(bench)
        protocol = spec.protocol(args.protocol)
        try:
            batches = _batches(spec, protocol, args.steps + args.warmup, args.seed, args.data_dir)
        except (MissingDataError, ImportError) as err:
            print(f"\n{bench}: skipped ({err})")
            continue
        print(f"\n{bench}: batch {protocol.batch_size}, {args.steps} timed steps, median ms")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            first = statistics.median(
                time_method(spec, protocol, "ls", batches, args.warmup, args.seed)
            )
            rows = []
            for name in chosen:
                try:
                    t = statistics.median(
                        time_method(spec, protocol, name, batches, args.warmup, args.seed)
                    )
                except ImportError as err:
                    print(f"  {name:15s} not available: {err}")
                    continue
                rows.append((name, t))
            last = statistics.median(
                time_method(spec, protocol, "ls", batches, args.warmup, args.seed)
            )
        ls = (first + last) / 2
        print(
            f"  {'ls':15s} {1000 * ls:9.2f} ms  1.00x  (first {1000 * first:.2f}, last {1000 * last:.2f})"
        )
        for name, t in rows:
            print(f"  {name:15s} {1000 * t:9.2f} ms  {t / ls:5.2f}x")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
