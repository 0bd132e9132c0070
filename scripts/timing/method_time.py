"""Time one ``aggregate`` step of every gradient aggregator, next to LS and torchjd, in one run.

For each method, number of tasks K and Jacobian width P (parameter-space methods: P = number
of shared parameters; representation-space "-UB" methods and GradDrop: P = B*D), a random
K x P Jacobian is aggregated by

- linear scalarisation (the sum of the rows: the cost floor of any aggregator),
- this package's method, and
- torchjd's implementation of the same algorithm (same hyper-parameters),

interleaved within each repeat (in a rotating order) so that machine load hits all three
alike. The table gives
medians (ms) over at least ``--repeats`` runs (more for cheap configurations, up to
``--min-time`` seconds) after ``--warmup`` runs, and the ratios ours / LS and
ours / torchjd. Stateful methods (Nash-MTL, GradVac) run their normal sequence of steps.

    nice -n 10 .venv/bin/python scripts/timing/method_time.py --repeats 15 --threads 1 --markdown
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch

from bayesagg.methods import create

PARAMETER_METHODS = [
    "mgda",
    "pcgrad",
    "cagrad",
    "imtl-g",
    "nash-mtl",
    "aligned-mtl",
    "upgrad",
    "graddrop",
    "gradvac",
]
REPRESENTATION_METHODS = ["mgda-ub", "imtl-g-ub", "aligned-mtl-ub", "graddrop"]
PARAMETER_SIZES = [10_000, 1_000_000]
REPRESENTATION_SIZES = [120 * 64, 128 * 160, 256 * 256]  # QM9, CIFAR-MTL, ChestX-ray14 B*D


def torchjd_counterpart(name: str, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return torchjd's aggregator for method ``name`` with this package's defaults."""
    import torchjd.aggregation as tja

    base = name.removesuffix("-ub")
    return {
        "mgda": lambda: tja.MGDA(epsilon=1e-5, max_iters=250),
        "pcgrad": tja.PCGrad,
        "cagrad": lambda: tja.CAGrad(c=0.4),
        "imtl-g": tja.IMTLG,
        "nash-mtl": lambda: tja.NashMTL(n_tasks=k, max_norm=1.0, optim_niter=20),
        "aligned-mtl": tja.AlignedMTL,
        "upgrad": tja.UPGrad,
        "graddrop": tja.GradDrop,
        "gradvac": tja.GradVac,
    }[base]()


def ours(name: str, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Return this package's ``aggregate`` for ``name`` (MGDA-UB gets its loss+ losses)."""
    method = create(name, num_tasks=k)
    if name == "mgda-ub":
        losses = torch.rand(k) + 0.5
        return lambda j: method.aggregate(j, losses)
    return method.aggregate


def time_row(
    name: str, k: int, p: int, repeats: int, warmup: int, dtype: torch.dtype, min_time: float
) -> dict:
    gen = torch.Generator().manual_seed(k * 7 + p)
    jac = torch.randn(k, p, generator=gen, dtype=dtype)
    jac[0] = -0.5 * jac[0] - jac[1 % k]  # some conflict, as in training
    fns = {
        "ls": lambda j: j.sum(dim=0),
        "ours": ours(name, k),
        "torchjd": torchjd_counterpart(name, k),
    }
    times: dict[str, list[float]] = {key: [] for key in fns}

    order = list(fns)

    def run_all(record: bool) -> float:
        total = 0.0
        order.append(order.pop(0))  # rotate, so that no implementation always runs first
        for key in order:
            fn = fns[key]
            start = time.perf_counter()
            out = fn(jac)
            elapsed = time.perf_counter() - start
            total += elapsed
            if not torch.isfinite(out).all():
                raise FloatingPointError(f"{key} {name} K={k} P={p}: non-finite output")
            if record:
                times[key].append(elapsed)
        return total

    cost = max(run_all(record=False) for _ in range(warmup))
    # cheap configurations get more repeats (up to ~min_time s in all), for stabler medians
    n = min(max(repeats, int(min_time / max(cost, 1e-9))), 200)
    for _ in range(n):
        run_all(record=True)
    row = {key: 1e3 * statistics.median(v) for key, v in times.items()}
    return {"method": name, "K": k, "P": p, **row}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, nargs="+", default=[2, 11, 20])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--min-time", type=float, default=0.5, help="seconds of repeats per cheap configuration"
    )
    parser.add_argument("--methods", nargs="+", default=None, help="subset of method names")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    grid = [(n, p) for n in PARAMETER_METHODS for p in PARAMETER_SIZES]
    grid += [(n, p) for n in REPRESENTATION_METHODS for p in REPRESENTATION_SIZES]
    if args.methods:
        grid = [(n, p) for n, p in grid if n in args.methods]
    header = ["method", "K", "P", "LS ms", "ours ms", "torchjd ms", "ours/LS", "ours/torchjd"]
    if args.markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "---|" * len(header))
    else:
        print("".join(f"{h:>15}" for h in header))
    worst = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cvxpy's DPP / accuracy notices from torchjd
        for name, p in grid:
            for k in args.tasks:
                r = time_row(name, k, p, args.repeats, args.warmup, dtype, args.min_time)
                ratio = r["ours"] / r["torchjd"]
                worst = max(worst, ratio)
                cells = [
                    name,
                    str(k),
                    f"{p:.0e}" if p >= 1e6 else str(p),
                    f"{r['ls']:.3f}",
                    f"{r['ours']:.3f}",
                    f"{r['torchjd']:.3f}",
                    f"{r['ours'] / r['ls']:.1f}",
                    f"{ratio:.2f}",
                ]
                if args.markdown:
                    print("| " + " | ".join(cells) + " |", flush=True)
                else:
                    print("".join(f"{c:>15}" for c in cells), flush=True)
    print(f"\nworst ours/torchjd ratio: {worst:.2f} (target <= 1.10)")


if __name__ == "__main__":
    main()
