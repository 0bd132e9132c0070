"""MultiMNIST's whole step with BayesAgg-MTL's equal Kronecker heads stacked, and one at a time.

    .venv/bin/python scripts/timing/kron_stacking.py --data-dir ../shared/data --rounds 15

BayesAgg-MTL fits and integrates the Kronecker-factored groups whose heads have one shape in
one stacked call (``BayesAgg._kron_stacks``); this script times the same trainers as
``overhead.py`` (LS and BayesAgg-MTL with the library's defaults, after one untimed epoch and
its ``end_epoch``) in alternated turns, LS then BayesAgg-MTL, switching the stacking off
(every group a stack of its own, the numbers being the same) every other round, and prints each
setting's median ratio to LS with its range, all in one process.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import warnings
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import overhead
from bayesagg.bayes_agg import BayesAgg
from bayesagg.benchmarks import registry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    options = argparse.Namespace(
        protocol="paper", seed=0, data_dir=args.data_dir, bayesagg_hparams={}
    )
    spec = registry.get("multimnist")
    batches = overhead.training_batches(spec, spec.protocol("paper"), 16, 0, args.data_dir)
    warnings.simplefilter("ignore")
    ls, ours = (
        overhead.Trainer("multimnist", "ls", options),
        overhead.Trainer("multimnist", "bayesagg", options),
    )
    ls.epoch(batches)
    ours.epoch(batches)
    timed = batches[2 : 2 + args.steps]
    for _ in range(2):
        ls.turn(timed)
        ours.turn(timed)
    stacks = BayesAgg._kron_stacks

    def _one_at_a_time(self: BayesAgg, heads: Any, labelled: Any) -> list[list[int]]:
        return [[i] for stack in stacks(self, heads, labelled) for i in stack]

    ratios: dict[str, list[float]] = {"stacked": [], "one at a time": []}
    try:
        for _ in range(args.rounds):
            for setting, values in ratios.items():
                BayesAgg._kron_stacks = (  # type: ignore[method-assign]
                    stacks if setting == "stacked" else _one_at_a_time
                )
                values.append(ours.turn(timed) / ls.turn(timed))
    finally:
        BayesAgg._kron_stacks = stacks  # type: ignore[method-assign]
    for setting, values in ratios.items():
        print(
            f"{setting}: whole step / LS {statistics.median(values):.2f} "
            f"[{min(values):.2f}-{max(values):.2f}] over {args.rounds} rounds"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
