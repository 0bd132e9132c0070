"""A whole training step of this package's parameter-space methods next to torchjd's.

For each benchmark (the ``paper`` protocol's model and batch size; real data), each method
(MGDA, UPGrad, IMTL-G, CAGrad, PCGrad, Nash-MTL) and fixed batches, one training step is

- ``ls``: linear scalarisation, this package (the floor: one backward of the summed losses);
- ``ours``: this package's method, ``bayesagg.runner.train.training_step`` (what the runner
  does: batched K x P Jacobian with ``vmap``, the aggregator, the heads' summed gradient);
- ``autojac``: torchjd's ``autojac.mtl_backward(losses, features=h)`` then
  ``autojac.jac_to_grad(encoder parameters, aggregator)`` with torchjd's aggregator of the same
  method and hyper-parameters (its heads get the gradient of their own loss, as ours);
- ``autogram``: torchjd's Gramian engine (``autogram.Engine(encoder, batch_dim=None)``:
  the K x K Gramian w.r.t. the encoder without the K x P Jacobian), torchjd's weighting of
  the same method on it, then ``losses.backward(weights)`` (only for weightings torchjd lists
  as autogram-compatible: not Nash-MTL; there the heads get ``w_i`` times their gradient).

Each then takes an Adam step. The variants run interleaved, round by round (``ls``, ``ours``,
``autojac``, ``autogram``, ``ls``, ...), each round timing ``--steps`` steps after one untimed
step; the ratio of a variant to LS is taken within a round, and the table gives the median
ratio over ``--rounds`` rounds with its min-max, and the median ms over rounds of LS (timed
again for every method) and of the variant (medians of different rounds, so their quotient
need not equal the median ratio on a machine whose load varies). Each variant keeps its own
model and optimiser (same initial weights) across rounds.

    nice -n 10 .venv/bin/python scripts/timing/torchjd_step.py --rounds 5 --steps 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bayesagg import methods
from bayesagg.benchmarks import registry
from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.runner.train import make_optimizer, training_step
from bayesagg.tasks import num_tasks, task_losses
from overhead import training_batches

METHODS = ("mgda", "upgrad", "imtl-g", "cagrad", "pcgrad", "nash-mtl")
VARIANTS = ("ls", "ours", "autojac", "autogram")


def torchjd_aggregator(name: str, k: int) -> Any:
    """torchjd's aggregator with this package's defaults (as scripts/timing/method_time.py)."""
    import torchjd.aggregation as tja

    return {
        "mgda": lambda: tja.MGDA(epsilon=1e-5, max_iters=250),
        "upgrad": tja.UPGrad,
        "imtl-g": tja.IMTLG,
        "cagrad": lambda: tja.CAGrad(c=0.4),
        "pcgrad": tja.PCGrad,
        "nash-mtl": lambda: tja.NashMTL(n_tasks=k, max_norm=1.0, optim_niter=20),
    }[name]()


def torchjd_weighting(name: str) -> Any | None:
    """torchjd's autogram-compatible weighting of method ``name`` (None: it has none)."""
    import torchjd.aggregation as tja

    return {
        "mgda": lambda: tja.MGDAWeighting(epsilon=1e-5, max_iters=250),
        "upgrad": tja.UPGradWeighting,
        "imtl-g": tja.IMTLGWeighting,
        "cagrad": lambda: tja.CAGradWeighting(c=0.4),
        "pcgrad": tja.PCGradWeighting,
    }.get(name, lambda: None)()


def make_step(spec: Any, protocol: Any, variant: str, name: str, seed: int) -> Callable:
    """Return ``step(x, targets)``: one whole training step of ``variant`` for method ``name``."""
    groups = spec.groups
    k = num_tasks(groups)
    torch.manual_seed(seed)
    model = spec.build_model(**dict(protocol.model_options))
    model.train()
    method = methods.create("ls" if variant == "ls" else name, num_tasks=k)
    optimizer = make_optimizer(model, method, protocol)
    shared = [p for p in model.encoder.parameters() if p.requires_grad]
    heads = [p for p in model.heads.parameters() if p.requires_grad]
    if variant in ("ls", "ours"):

        def step(x: Any, targets: list) -> None:
            training_step(model, method, optimizer, groups, x, targets)

        return step
    if variant == "autojac":
        from torchjd.autojac import jac_to_grad, mtl_backward

        aggregator = torchjd_aggregator(name, k)

        def step(x: Any, targets: list) -> None:
            h, outputs = model(x)
            losses = task_losses(groups, outputs, targets)
            optimizer.zero_grad(set_to_none=True)
            # retain_graph: the K losses are entries of one stacked tensor, whose graph torchjd
            # would otherwise free after the first task
            mtl_backward(list(losses), features=h, shared_params=shared, retain_graph=True)
            jac_to_grad(shared, aggregator)
            optimizer.step()

        return step
    from torchjd.autogram import Engine

    weighting = torchjd_weighting(name)
    if weighting is None:
        raise LookupError(f"torchjd has no autogram weighting for {name}")
    engine = Engine(model.encoder, batch_dim=None)

    def step(x: Any, targets: list) -> None:
        _, outputs = model(x)
        losses = task_losses(groups, outputs, targets)
        optimizer.zero_grad(set_to_none=True)
        gramian = engine.compute_gramian(losses)
        weights = weighting(gramian)
        losses.backward(weights)
        optimizer.step()

    del heads  # autogram's weighted backward reaches the heads itself
    return step


def jacobian_side_ms(k: int, p: int, repeats: int = 20) -> float:
    """Median ms of the work on the K x P Jacobian that a Gramian engine avoids.

    ``G = J J^T`` and ``d = w @ J`` on a float32 K x P matrix: the most that computing the
    Gramian without the Jacobian could save in a step (the per-task backward passes remain;
    instead, a Gramian engine needs one more backward, of ``sum_i w_i L_i``).
    """
    j = torch.randn(k, p)
    w = torch.ones(k)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _ = j @ j.T
        _ = w @ j
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def run_benchmark(bench: str, names: list[str], args: argparse.Namespace) -> list[dict]:
    spec = registry.get(bench)
    protocol = spec.protocol(args.protocol)
    batches = training_batches(spec, protocol, args.steps + 1, args.seed, args.data_dir)
    k = num_tasks(spec.groups)
    rows = []
    for name in names:
        steps: dict[str, Callable] = {}
        for variant in VARIANTS:
            try:
                steps[variant] = make_step(spec, protocol, variant, name, args.seed)
            except (LookupError, ImportError, ValueError) as err:
                print(f"  {bench} {name} {variant}: skipped ({err})", file=sys.stderr)
        times: dict[str, list[float]] = {v: [] for v in steps}
        ratios: dict[str, list[float]] = {v: [] for v in steps}
        for _ in range(args.rounds):
            medians = {}
            for variant, step in steps.items():
                x0, t0 = batches[0]
                step(x0, t0)  # untimed
                timed = []
                for x, targets in batches[1:]:
                    start = time.perf_counter()
                    step(x, targets)
                    timed.append(time.perf_counter() - start)
                medians[variant] = statistics.median(timed)
            for variant, t in medians.items():
                times[variant].append(t)
                ratios[variant].append(t / medians["ls"])
        for variant in steps:
            rows.append(
                {
                    "benchmark": bench,
                    "K": k,
                    "batch": protocol.batch_size,
                    "method": name,
                    "variant": variant,
                    "ms": 1000 * statistics.median(times[variant]),
                    "ratio": statistics.median(ratios[variant]),
                    "ratio_min": min(ratios[variant]),
                    "ratio_max": max(ratios[variant]),
                }
            )
        line = ", ".join(
            f"{r['variant']} {r['ratio']:.2f}x"
            for r in rows
            if r["benchmark"] == bench and r["method"] == name
        )
        print(f"  {bench} {name}: {line}", file=sys.stderr)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="multimnist,fashion-mtl")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--protocol", default="paper", help="model and batch size from it")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (>= 5)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per variant and round")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave)")
    parser.add_argument("--data-dir")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from importlib.metadata import version

    import torchjd  # noqa: F401 - fail early with a clear message when missing

    print(
        f"torch {torch.__version__}, torchjd {version('torchjd')}, "
        f"{torch.get_num_threads()} thread(s), protocol {args.protocol}, {args.rounds} rounds "
        f"x {args.steps} timed steps; ratio = variant / LS within a round, median [min-max]\n"
    )
    notes: list[str] = []
    print("| benchmark | K | batch | method | LS ms | variant | ms | x LS | min-max |")
    print("|---|---|---|---|---|---|---|---|---|")
    for bench in args.benchmarks.split(","):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                rows = run_benchmark(bench, args.methods.split(","), args)
        except (MissingDataError, ImportError) as err:
            print(f"| {bench} | | | | | skipped ({err}) | | | |")
            continue
        spec = registry.get(bench)
        model = spec.build_model(**dict(spec.protocol(args.protocol).model_options))
        p = sum(t.numel() for t in model.encoder.parameters() if t.requires_grad)
        k = rows[0]["K"]
        ours = statistics.median(r["ms"] for r in rows if r["variant"] == "ours")
        side = jacobian_side_ms(k, p)
        notes.append(
            f"{bench}: K x P = {k} x {p}; J J^T + w @ J take {side:.2f} ms, "
            f"{100 * side / ours:.2g} % of our median step ({ours:.1f} ms): the most a "
            "Gramian engine could save"
        )
        for r in rows:
            if r["variant"] == "ls":
                continue
            ls_ms = next(
                q["ms"] for q in rows if q["method"] == r["method"] and q["variant"] == "ls"
            )
            print(
                f"| {r['benchmark']} | {r['K']} | {r['batch']} | {r['method']} | {ls_ms:.1f} "
                f"| {r['variant']} | {r['ms']:.1f} | {r['ratio']:.2f} "
                f"| {r['ratio_min']:.2f}-{r['ratio_max']:.2f} |"
            )
        sys.stdout.flush()
    print()
    for note in notes:
        print(f"- {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
