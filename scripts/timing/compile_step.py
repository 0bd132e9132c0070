"""A benchmark's training step with its encoder compiled by ``torch.compile``, next to eager.

    nice -n 10 .venv/bin/python scripts/timing/compile_step.py --data-dir ../shared/data \\
        --benchmarks multimnist --methods ls,upgrad-ub,bayesagg

For each benchmark (``paper`` protocol's model and batch size, real training batches) and
method, two models built from the same seed train on the same batches: one eager, one whose
encoder is wrapped in ``torch.compile`` (default backend, inductor). Reported: the first step
of each (for the compiled one it includes the compilation), the median of the next ``--steps``
steps, and their ratio. BayesAgg-MTL runs without warm-up epochs, so every step is one of its
own. Methods that take one backward pass per task over the graph refuse a compiled encoder
(README, "Mixed precision and torch.compile"); their row says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from typing import Any

import torch

from bayesagg.benchmarks import registry
from bayesagg.runner import RunConfig, plan
from bayesagg.runner.train import make_loader, make_optimizer, split_batch, training_step


def _batches(p: Any, count: int, data_dir: str | None, seed: int) -> list[Any]:
    protocol = p.protocol
    splits = p.spec.load(
        data_dir, seed=seed, limit=protocol.batch_size * count, **dict(protocol.data_options)
    )
    loader = make_loader(p.spec, splits.train, protocol.batch_size, shuffle=True, seed=seed)
    out = [split_batch(p.spec, p.groups, b, torch.device("cpu")) for b in loader]
    return (out * count)[:count]


def _run(benchmark: str, method: str, compiled: bool, args: argparse.Namespace) -> dict:
    hparams = {"warmup_epochs": 0} if method.startswith("bayesagg") else {}
    p = plan(
        RunConfig(
            benchmark=benchmark,
            method=method,
            protocol="paper",
            seed=args.seed,
            hparams=hparams,
            data_dir=args.data_dir,
        )
    )
    torch.manual_seed(args.seed)
    model = p.spec.build_model(p.groups, **dict(p.protocol.model_options))
    if compiled:
        model.encoder = torch.compile(model.encoder)
    method_obj = p.create_method()
    optimizer = make_optimizer(model, method_obj, p.protocol)
    model.train()
    times = []
    for x, targets in _batches(p, args.steps + 1, args.data_dir, args.seed):
        began = time.perf_counter()
        training_step(model, method_obj, optimizer, p.groups, x, targets)
        times.append(time.perf_counter() - began)
    return {"first": times[0], "steady": statistics.median(times[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="multimnist")
    parser.add_argument("--methods", default="ls,upgrad-ub,bayesagg,upgrad")
    parser.add_argument("--steps", type=int, default=10, help="timed steps after the first")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}")
    for benchmark in args.benchmarks.split(","):
        spec = registry.get(benchmark)
        print(
            f"\n{benchmark}: batch {spec.protocol('paper').batch_size}\n\n"
            "| method | eager first step (ms) | eager step (ms) | compiled first step (ms) "
            "| compiled step (ms) | compiled / eager step |\n|---|---|---|---|---|---|",
            flush=True,
        )
        for method in args.methods.split(","):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                eager = _run(benchmark, method, False, args)
                try:
                    fast = _run(benchmark, method, True, args)
                except RuntimeError as err:
                    reason = str(err).split(":")[0]
                    print(
                        f"| {method} | {1000 * eager['first']:.0f} | "
                        f"{1000 * eager['steady']:.1f} | refused: {reason} | | |",
                        flush=True,
                    )
                    continue
            print(
                f"| {method} | {1000 * eager['first']:.0f} | {1000 * eager['steady']:.1f} "
                f"| {1000 * fast['first']:.0f} | {1000 * fast['steady']:.1f} "
                f"| {fast['steady'] / eager['steady']:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
