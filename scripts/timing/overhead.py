"""Whole training step of every method as a ratio to linear scalarisation (LS), side by side.

For each runnable benchmark (its data is found), with the ``paper`` protocol's model and batch
size, every method is timed against LS in alternating turns: LS, method, LS, method, ... for
``--rounds`` rounds. A turn is ``--steps`` whole training steps (forward, the method's backward,
gradient clipping as the protocol does it, optimiser step: ``bayesagg.runner.train.
training_step``, the runner's own step) on the same fixed batches; the ratio of a round is the
method's median step over LS's median step in the adjacent turn, and the report gives the
median ratio over rounds with its min-max. Both models are built from the same seed and warmed
up (``--warmup`` untimed steps each) before the first round; the method's state carries over
between its turns, as in training. Between the warm-up and the rounds both models train one
untimed epoch over ``--epoch-batches`` batches, after which every method's ``end_epoch`` runs
as the runner calls it after every epoch (DWA's and similar loss histories; BayesAgg-MTL's epoch
prior, fitted on that epoch's features), so that the rounds time the state of training after
its first epoch rather than before any (``--epoch-batches 0``); the table's last column is that
end-of-epoch hook's time, once per epoch.

``bayesagg`` is the library's BayesAgg-MTL (default options) and ``bayesagg-paper`` the
published recipe (the protocol's settings), both without warm-up epochs so that every timed
step is a BayesAgg-MTL step. A method whose warm-up step costs more than ``--max-ratio`` times
LS's is not timed in rounds (its cost is not in doubt, and a round would take minutes on a
CPU); its warm-up ratio is printed instead, marked as such.

    python scripts/timing/overhead.py --data-dir ../shared/data                       # everything
    python scripts/timing/overhead.py --benchmarks multimnist --methods bayesagg,mgda-ub --rounds 5
    python scripts/timing/overhead.py --benchmarks multimnist --methods bayesagg \
        --hp multiclass_posterior=kron --rounds 7

``--hp KEY=VALUE`` (repeatable) sets a hyper-parameter of the BayesAgg-MTL methods timed (e.g.
the Kronecker-factored multiclass posterior); their rows are labelled with it.
"""

from __future__ import annotations

import argparse
import inspect
import os
import statistics
import sys
import time
import warnings
from typing import Any

import torch

from bayesagg import methods
from bayesagg.bayes_agg import PAPER_BEHAVIOUR, BayesAgg
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.runner import RunConfig, plan
from bayesagg.runner.clipping import GradientClipping
from bayesagg.runner.hparams import parse_hparams
from bayesagg.runner.train import make_loader, make_optimizer, split_batch, training_step
from bayesagg.tasks import Regression

BENCHMARKS = ("qm9", "utkface", "multimnist", "fashion-mtl")
#: The library's defaults of the options the paper protocols pin to the published behaviour.
LIBRARY_DEFAULTS = {
    k: inspect.signature(BayesAgg.__init__).parameters[k].default for k in PAPER_BEHAVIOUR
}


def training_batches(
    spec: Any, protocol: Any, count: int, seed: int, data_dir: str | None
) -> list[Any]:
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
    return (out * count)[:count]


class Trainer:
    """One model, optimiser and method, stepping on fixed batches (``turn`` times them)."""

    def __init__(self, benchmark: str, method: str, args: argparse.Namespace) -> None:
        hparams: dict[str, Any] = {}
        if method.startswith("bayesagg"):
            hparams["warmup_epochs"] = 0
            if method == "bayesagg":
                hparams.update(LIBRARY_DEFAULTS)
            hparams.update(args.bayesagg_hparams)
        p = plan(
            RunConfig(
                benchmark=benchmark,
                method=method,
                protocol=args.protocol,
                seed=args.seed,
                hparams=hparams,
                data_dir=args.data_dir,
            )
        )
        self.groups = p.groups
        torch.manual_seed(args.seed)
        self.model = p.spec.build_model(p.groups, **dict(p.protocol.model_options))
        self.method = p.create_method()
        self.optimizer = make_optimizer(self.model, self.method, p.protocol)
        # As after the warm-up epochs: the shared parameters' clipping applies too.
        self.clip = GradientClipping(p.protocol.clip_heads, p.protocol.clip_shared, 0).for_epoch(
            p.protocol.epochs - 1
        )
        self.model.train()

    def epoch(self, batches: list[Any]) -> float:
        """Train one untimed epoch over ``batches``, then run the method's end-of-epoch hook (as
        the runner does after every epoch); return the seconds of that hook."""
        total = None
        for x, targets in batches:
            losses = training_step(
                self.model, self.method, self.optimizer, self.groups, x, targets, clip=self.clip
            )
            total = losses if total is None else total + losses
        began = time.perf_counter()
        self.method.end_epoch(None if total is None else total / len(batches))
        return time.perf_counter() - began

    def turn(self, batches: list[Any]) -> float:
        """Return the median seconds of one training step over ``batches``."""
        times = []
        for x, targets in batches:
            began = time.perf_counter()
            training_step(
                self.model, self.method, self.optimizer, self.groups, x, targets, clip=self.clip
            )
            times.append(time.perf_counter() - began)
        return statistics.median(times)


def compare(benchmark: str, name: str, batches: list[Any], args: argparse.Namespace) -> dict:
    """Return LS's and the method's medians and the ratio of each round."""
    ls, other = Trainer(benchmark, "ls", args), Trainer(benchmark, name, args)
    warm = batches[: args.warmup]
    ls_warm, other_warm = ls.turn(warm), other.turn(warm)
    if other_warm > args.max_ratio * ls_warm:
        return {"warmup_only": other_warm / ls_warm, "ls": ls_warm, "method": other_warm}
    epoch_end = None
    if args.epoch_batches:  # the state of training after its first epoch (module docstring)
        ls.epoch(batches[: args.epoch_batches])
        epoch_end = other.epoch(batches[: args.epoch_batches])
    timed = batches[args.warmup : args.warmup + args.steps]
    ratios, ls_times, times = [], [], []
    for _ in range(args.rounds):
        ls_times.append(ls.turn(timed))
        times.append(other.turn(timed))
        ratios.append(times[-1] / ls_times[-1])
    return {
        "ratio": statistics.median(ratios),
        "min": min(ratios),
        "max": max(ratios),
        "ls": statistics.median(ls_times),
        "method": statistics.median(times),
        "epoch_end": epoch_end,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--methods", help="comma-separated (default: every method but stl)")
    parser.add_argument("--protocol", default="paper", help="model and batch size from it")
    parser.add_argument("--rounds", type=int, default=5, help="alternated LS/method rounds")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per turn")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps of each first")
    parser.add_argument(
        "--epoch-batches",
        type=int,
        default=16,
        help="batches of the untimed epoch before the rounds (0: none)",
    )
    parser.add_argument("--max-ratio", type=float, default=float("inf"))
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hp", action="append", default=[], help="KEY=VALUE for the BayesAgg-MTL methods"
    )
    args = parser.parse_args(argv)
    args.bayesagg_hparams = parse_hparams(args.hp)
    label = "".join(f"[{item}]" for item in args.hp)
    names = (
        args.methods.split(",")
        if args.methods
        else [m for m in methods.names() if m not in ("stl", "ls")]
    )
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; "
        f"protocol {args.protocol}; {args.rounds} rounds of LS then method, {args.steps} timed "
        f"steps per turn after {args.warmup} warm-up steps each"
    )
    for benchmark in args.benchmarks.split(","):
        spec = registry.get(benchmark)
        protocol = spec.protocol(args.protocol)
        try:
            batches = training_batches(
                spec,
                protocol,
                max(args.warmup + args.steps, args.epoch_batches),
                args.seed,
                args.data_dir,
            )
        except (MissingDataError, ImportError) as err:
            print(f"\n{benchmark}: skipped ({err})")
            continue
        print(
            f"\n{benchmark}: batch {protocol.batch_size}, {protocol.note}\n\n"
            "| method | step (ms) | LS step (ms) | ratio to LS: median | min | max "
            "| end of epoch (ms) |\n|---|---|---|---|---|---|---|",
            flush=True,
        )
        for name in names:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    row = compare(benchmark, name, batches, args)
                except ImportError as err:
                    print(f"| {name} | not available: {err} | | | | | |", flush=True)
                    continue
            if "warmup_only" in row:
                print(
                    f"| {name} | {1000 * row['method']:.1f} (one warm-up step) "
                    f"| {1000 * row['ls']:.1f} | {row['warmup_only']:.2f} (warm-up step, "
                    f"> {args.max_ratio:g}x: not timed in rounds) | - | - | - |",
                    flush=True,
                )
                continue
            shown = name + label if name.startswith("bayesagg") else name
            epoch_end = "-" if row["epoch_end"] is None else f"{1000 * row['epoch_end']:.1f}"
            print(
                f"| {shown} | {1000 * row['method']:.1f} | {1000 * row['ls']:.1f} "
                f"| {row['ratio']:.2f} | {row['min']:.2f} | {row['max']:.2f} "
                f"| {epoch_end} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
