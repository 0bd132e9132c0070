"""Whole-step cost of the representation-level ("-ub") variants next to their parameter-space
methods, as a ratio to linear scalarisation (LS), on the benchmarks' real models and batches.

Reuses ``benchmarks/overhead.py``'s batches and timer (the runner's own ``training_step``).
LS is timed first and last; the ratio uses their mean. Expectation (issue 8, item 4): a "-ub"
variant costs about one LS backward plus the aggregation on a K x (B*D) Jacobian, whatever the
parameter count, while the parameter-space method needs the K x P Jacobian.

    python benchmarks/representation_cost.py --benchmarks multimnist,fashion-mtl --steps 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings

import torch

sys.path.insert(0, os.path.dirname(__file__))
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.paths import MissingDataError
from overhead import _batches, time_method

PAIRS = ("pcgrad", "upgrad", "cagrad", "dualproj", "fairgrad", "ntkmtl")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="multimnist,fashion-mtl")
    parser.add_argument("--methods", default=",".join(PAIRS), help="parameter-space methods")
    parser.add_argument("--protocol", default="paper")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, protocol {args.protocol}, "
        f"{args.steps} timed steps after {args.warmup}; median ms per whole step"
    )
    for bench in args.benchmarks.split(","):
        spec = registry.get(bench)
        protocol = spec.protocol(args.protocol)
        try:
            batches = _batches(spec, protocol, args.steps + args.warmup, args.seed, args.data_dir)
        except (MissingDataError, ImportError) as err:
            print(f"\n{bench}: skipped ({err})")
            continue
        print(f"\n{bench}: batch {protocol.batch_size}")

        def median(name: str, spec=spec, protocol=protocol, batches=batches) -> float:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return statistics.median(
                    time_method(spec, protocol, name, batches, args.warmup, args.seed)
                )

        first = median("ls")
        rows = [(m, median(m), median(f"{m}-ub")) for m in args.methods.split(",")]
        last = median("ls")
        ls = (first + last) / 2
        print(
            f"  {'ls':10s} {1000 * ls:9.1f} ms (first {1000 * first:.1f}, last {1000 * last:.1f})"
        )
        print(f"  {'method':10s} {'params':>9s} {'x LS':>6s} {'-ub':>9s} {'x LS':>6s}")
        for name, par, rep in rows:
            print(
                f"  {name:10s} {1000 * par:9.1f} {par / ls:6.2f} {1000 * rep:9.1f} {rep / ls:6.2f}"
            )
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
