"""Time the factored multiclass moments under two tables of ``"qmc"`` node-count levels.

    python scripts/timing/qmc_levels.py [--classes 10 --dims 50 --batch 256 --heads 2]

Side by side in one process, call after call: ``bayesagg.kronecker.stacked_moments`` of
``--heads`` stacked C-class heads on D features for one batch, once with the library's
:data:`bayesagg.moments.QMC_LEVELS` and once with the earlier table that had a 2 x base level
for widths 0.4-0.8. The posterior is a Laplace fit of a random head (unit prior precision) on
random features whose scale is set so that the examples' median logit width is ``--width``
(default 0.55, where the two tables differ: MultiMNIST's heads sit at 0.4-0.7 after a few
dozen steps). Prints the median milliseconds of each after warm-up and the node counts used.

    python scripts/timing/qmc_levels.py --overhead-with earlier -- --data-dir ../shared/data --benchmarks multimnist --methods bayesagg --rounds 7

runs ``scripts/timing/overhead.py`` (whole steps against LS) with the arguments after ``--``
and the library's levels replaced by the ``earlier`` (or the ``library``'s own) table, so that
whole steps under the two tables can be compared run by run.
"""

from __future__ import annotations

import argparse
import math
import runpy
import statistics
import sys
import time
from pathlib import Path

import torch

import bayesagg.kronecker as kronecker
import bayesagg.moments as moments

#: The levels before the 2 x base level was dropped (docs/bayesagg-math.md, stage 2).
EARLIER_LEVELS = ((0.4, 1), (0.8, 2), (1.6, 4), (math.inf, 16))


def logit_cov(h: torch.Tensor, post: kronecker.KroneckerGaussian) -> torch.Tensor:
    """Return each example's logit covariance V [B, C, C] under the factored posterior."""
    ht = kronecker.augment(h, True)
    nu = (ht @ post.feature_basis).square() @ post.variances.mT
    return (post.class_basis * nu[:, None, :]) @ post.class_basis.mT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dims", type=int, default=50)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--heads", type=int, default=2)
    parser.add_argument("--width", type=float, default=0.55)
    parser.add_argument("--repeats", type=int, default=25)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--overhead-with",
        choices=("library", "earlier"),
        help="run overhead.py (arguments after --) with this table of levels instead",
    )
    args, rest = parser.parse_known_args()
    if args.overhead_with:
        if args.overhead_with == "earlier":
            moments.QMC_LEVELS = kronecker.QMC_LEVELS = EARLIER_LEVELS
        sys.argv = ["overhead.py", *(rest[1:] if rest[:1] == ["--"] else rest)]
        runpy.run_path(str(Path(__file__).with_name("overhead.py")), run_name="__main__")
        return
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    c, d, b = args.classes, args.dims, args.batch
    g = torch.Generator().manual_seed(0)
    fit = torch.randn(4 * c + 30, d, generator=g, dtype=torch.float64)
    weight = torch.randn(c, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    labels = torch.multinomial(torch.softmax(fit @ weight.T, -1), 1, generator=g)[:, 0]
    prior = kronecker.KroneckerPrecision.isotropic(c, d + 1, 1.0, dtype=torch.float64)
    post = kronecker.posterior(
        fit,
        labels,
        weight,
        torch.zeros(c, dtype=torch.float64),
        torch.zeros(c, d + 1, dtype=torch.float64),
        prior,
    )
    h = torch.randn(b, d, generator=g, dtype=torch.float64)
    # Scale the features so that the median logit width is --width: the width grows with the
    # scale, but not in proportion (the bias's share does not scale), so bisect on it.

    def median_width(scale: float) -> float:
        return float(moments.logit_width(logit_cov(scale * h, post)).median())

    if median_width(0.0) > args.width:
        parser.error(
            f"--width {args.width} is below this posterior's smallest median width "
            f"{median_width(0.0):.2f} (its bias alone)"
        )
    low, high = 0.0, 1.0
    while median_width(high) < args.width:
        high *= 2
    for _ in range(50):
        low, high = (
            (low, (low + high) / 2)
            if median_width((low + high) / 2) > args.width
            else ((low + high) / 2, high)
        )
    h = high * h
    cov = logit_cov(h, post)
    reached = float(moments.logit_width(cov).median())
    post32 = kronecker.KroneckerGaussian(
        post.mean.float(),
        post.precision.to(torch.float32),
        post.class_basis.float(),
        post.feature_basis.float(),
        post.variances.float(),
    )
    h32 = h.float()
    y = torch.randint(0, c, (args.heads, b), generator=g)
    tables = {"library": moments.QMC_LEVELS, "earlier": EARLIER_LEVELS}
    times: dict[str, list[float]] = {name: [] for name in tables}
    counts: dict[str, list[int]] = {}
    try:
        for turn in range(args.warmup + args.repeats):
            for name, levels in tables.items():
                moments.QMC_LEVELS = kronecker.QMC_LEVELS = levels
                began = time.perf_counter()
                kronecker.stacked_moments(h32, y, [post32] * args.heads)
                if turn >= args.warmup:
                    times[name].append(1000 * (time.perf_counter() - began))
        for name, levels in tables.items():
            moments.QMC_LEVELS = levels
            counts[name] = sorted(set(moments.qmc_node_counts(cov, c).tolist()))
    finally:
        moments.QMC_LEVELS = kronecker.QMC_LEVELS = tables["library"]
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.heads} stacked "
        f"{c}-class heads on {d} features, batch {b}, median width {reached:.2f}; median of "
        f"{args.repeats} alternated calls after {args.warmup}"
    )
    for name in tables:
        print(
            f"{name} levels {tables[name]}: {statistics.median(times[name]):.2f} ms, "
            f"node counts {counts[name]}"
        )


if __name__ == "__main__":
    main()
