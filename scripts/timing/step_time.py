"""Time one BayesAgg-MTL step next to one plain backward, at the paper's sizes (CPU by default).

    nice -n 10 .venv/bin/python scripts/timing/step_time.py [--threads 2] [--repeats 30] [--profile]
    nice -n 10 .venv/bin/python scripts/timing/step_time.py --accuracy --threads 1 --sizes multimnist,utkface

The BayesAgg step is everything ``BayesAgg.backward(h, heads, targets)`` does after the forward
pass: input checks, adding the batch to the epoch's prior statistics, the batch posteriors with
the full-data prior (a prior fitted on 20 earlier batches), the gradient moments, the
aggregation and ``h.backward(g / B)`` plus the classification heads' gradients. The plain
backward is the linear-scalarisation step through the same heads: the heads' forward, the K
task losses and ``losses.sum().backward()``. ``h`` is a leaf [B, D] standing for the encoder's
output, so neither timing includes the encoder, which is the same for both methods.

Sizes (paper Sec. 5; docs/benchmarks.md, "Settings of the `paper` protocols"): QM9 (B 120, D 64, 11 regression outputs), CIFAR-MTL
(B 128, D 160, 20 binary tasks), ChestX-ray14 (B 256, D 256, 14 binary), UTKFace (B 128, D 256:
age regression, gender binary, 5-class ethnicity), MultiMNIST (B 256, D 50: two 10-class
digits). Targets on a 2-core CPU with the default moments (``qmc``): <= 5 ms per step at QM9
size and <= 30 ms at CIFAR-MTL size. Medians over ``--repeats`` runs after ``--warmup`` runs.
``--profile`` splits the BayesAgg step into its stages (posterior, moments, aggregation +
backward; the rest is checks and statistics).

``--accuracy`` compares the multiclass moment estimators on the first multiclass group of each
size, with the posterior the step builds: the time of one group's moments (float32, the pure
function, median) next to the estimator's median relative error (float64, so that only the rule
errs) against a Monte-Carlo reference of ``--reference-samples`` (2M) draws on the batch's first
``--reference-examples`` (16) examples and ``--reference-dims`` (16) evenly spaced dimensions
of g: it draws those dimensions' class weights W[:, d] and the examples' logits from their exact
joint Gaussian and forms g_d = W[:, d]^T (softmax(a) - e_y) explicitly (``reference_dims`` in
scripts/studies/multiclass_moments.py: the whole 1285-dimensional UTKFace weight vector would cost
~40x more per draw). Its own noise floor (median standard error) is printed beside it.
Target: one 10-class group at MultiMNIST size in <= 10 ms on one thread, errors <= 1 %.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from bayesagg import BayesAgg, Binary, Multiclass, Regression, moments, posterior
from bayesagg.aggregation import weights
from bayesagg.tasks import TaskGroup, task_kinds, task_losses

#: Targets (ms per step, default moments, 2 CPU threads).
TARGETS_MS = {"qm9": 5.0, "cifar-mtl": 30.0}


@dataclass(frozen=True)
class Size:
    name: str
    batch: int
    dim: int
    groups: tuple[TaskGroup, ...]


SIZES = (
    Size("qm9", 120, 64, (Regression("targets", outputs=11),)),
    Size("cifar-mtl", 128, 160, (Binary("superclasses", outputs=20),)),
    Size("chestxray", 256, 256, (Binary("diseases", outputs=14),)),
    Size(
        "utkface",
        128,
        256,
        (Regression("age"), Binary("gender"), Multiclass("ethnicity", classes=5)),
    ),
    Size(
        "multimnist",
        256,
        50,
        (Multiclass("left", classes=10), Multiclass("right", classes=10)),
    ),
)


def random_targets(groups: Sequence[TaskGroup], batch: int, g: torch.Generator) -> list[Tensor]:
    out = []
    for group in groups:
        if isinstance(group, Regression):
            out.append(torch.randn(batch, group.outputs, generator=g))
        elif isinstance(group, Binary):
            out.append(torch.randint(0, 2, (batch, group.outputs), generator=g).float())
        else:
            out.append(torch.randint(0, group.classes, (batch,), generator=g))
    return out


def _times_ms(run: Callable[[], None], repeats: int, warmup: int) -> tuple[float, float]:
    """Return (median, minimum) milliseconds of ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def _median_ms(run: Callable[[], None], repeats: int, warmup: int) -> float:
    return _times_ms(run, repeats, warmup)[0]


def setup(size: Size, method: str, seed: int = 0):
    """Return (agg, heads, h, targets) with the prior fitted on 20 earlier batches."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    heads = nn.ModuleList([nn.Linear(size.dim, group.head_outputs) for group in size.groups])
    agg = BayesAgg(size.groups, moments=method, generator=torch.Generator().manual_seed(seed))
    for _ in range(20):
        # ELU-like features, as the paper's encoders end in an ELU.
        h = torch.nn.functional.elu(torch.randn(size.batch, size.dim, generator=g))
        agg.backward(h.requires_grad_(True), heads, random_targets(size.groups, size.batch, g))
    agg.end_epoch()
    h = torch.nn.functional.elu(torch.randn(size.batch, size.dim, generator=g))
    return agg, heads, h.requires_grad_(True), random_targets(size.groups, size.batch, g)


def time_size(
    size: Size, method: str, repeats: int, warmup: int
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Return ((median, min) BayesAgg step ms, (median, min) plain backward ms)."""
    agg, heads, h, targets = setup(size, method)

    def bayesagg_step() -> None:
        h.grad = None
        agg.backward(h, heads, targets)

    def plain_step() -> None:
        h.grad = None
        losses = task_losses(size.groups, [head(h) for head in heads], targets)
        losses.sum().backward()

    return _times_ms(bayesagg_step, repeats, warmup), _times_ms(plain_step, repeats, warmup)


def profile_size(size: Size, method: str, repeats: int, warmup: int) -> dict[str, float]:
    """Return median ms of the stages of one step, timed through the pure functions."""
    agg, heads, h, targets = setup(size, method)
    hd = h.detach()
    # Every head here has a bias (regression included), so P = D + 1 for every group.
    priors = [
        agg.prior.prior(i, size.dim + 1, dtype=hd.dtype, device=hd.device)
        for i in range(len(size.groups))
    ]
    generator = torch.Generator().manual_seed(0)

    def posteriors():
        out = []
        for group, head, y, (m0, p0) in zip(size.groups, heads, targets, priors, strict=True):
            w, b = head.weight.detach(), head.bias.detach()
            if isinstance(group, Regression):
                post = posterior.regression(hd, y, m0, p0, bias=True)
            elif isinstance(group, Binary):
                post = posterior.binary(hd, y, w, b, m0, p0)
            else:
                post = posterior.multiclass(hd, y, w, b, m0, p0)
            out.append((post.mean, post.covariance()))
        return out

    fitted = posteriors()

    def all_moments():
        out = []
        for group, y, (mean, cov) in zip(size.groups, targets, fitted, strict=True):
            if isinstance(group, Regression):
                out.append(moments.regression(hd, y, mean, cov))
            elif isinstance(group, Binary):
                # Binary moments have one deterministic rule, which "qmc" uses too.
                binary_method = "monte_carlo" if method == "monte_carlo" else "rao_blackwell"
                out.append(
                    moments.binary(hd, y, mean, cov, method=binary_method, generator=generator)
                )
            else:
                out.append(moments.multiclass(hd, y, mean, cov, method=method, generator=generator))
        return out

    computed = all_moments()
    mu = torch.cat([m for m, _ in computed], 1)
    var = torch.cat([v for _, v in computed], 1)
    powers = torch.tensor([0.85 if k == "regression" else 0.1 for k in task_kinds(size.groups)])

    def aggregation_and_backward():
        h.grad = None
        g = (weights(var, powers) * mu).sum(1)
        h.backward(g / size.batch)

    def whole():
        h.grad = None
        agg.backward(h, heads, targets)

    return {
        "posterior (incl. covariance)": _median_ms(posteriors, repeats, warmup),
        "moments": _median_ms(all_moments, repeats, warmup),
        "aggregation + h.backward": _median_ms(aggregation_and_backward, repeats, warmup),
        "whole step": _median_ms(whole, repeats, warmup),
    }


def accuracy(chosen: Sequence[Size], args: argparse.Namespace) -> list[dict[str, object]]:
    """Print one multiclass group's moment time and error per estimator (``--accuracy``)."""
    from multiclass_moments import reference_dims  # scripts/studies/multiclass_moments.py

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, CPU ({os.cpu_count()} cores, load average {load}), "
        f"{torch.get_num_threads()} threads; time: float32, median of {args.repeats} runs after "
        f"{args.warmup}; errors: float64 against {args.reference_samples} weight draws on "
        f"{args.reference_examples} examples"
    )
    print(
        "| size | B | D | C | moments | nodes / draws | one group's moments (ms) "
        "| mean: median rel. error | var: median rel. error |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in chosen:
        index = next((i for i, g in enumerate(size.groups) if isinstance(g, Multiclass)), None)
        if index is None:
            continue
        group = size.groups[index]
        agg, heads, h, targets = setup(size, "qmc")
        hd, y = h.detach(), targets[index]
        m0, p0 = agg.prior.prior(index, size.dim + 1, dtype=hd.dtype, device=hd.device)
        head = heads[index]
        post = posterior.multiclass(hd, y, head.weight.detach(), head.bias.detach(), m0, p0)
        mean, cov = post.mean, post.covariance()
        n = args.reference_examples
        h64, mean64, cov64 = hd.double(), mean.double(), cov.double()
        # Evenly spaced dimensions of g (the reference draws only their weights and the logits).
        dims = torch.linspace(0, size.dim - 1, args.reference_dims).round().long().unique()
        ref = reference_dims(
            h64[:n], y[:n], mean64, 0.5 * (cov64 + cov64.T), args.reference_samples, dims
        )
        floor = (ref["se_mu"] / ref["mu"].abs()).median(), (ref["se_var"] / ref["var"]).median()
        print(
            f"| {size.name} | {size.batch} | {size.dim} | {group.classes} | reference "
            f"(noise floor: its standard error) | {args.reference_samples} | - | "
            f"{100 * float(floor[0]):.2f} % | {100 * float(floor[1]):.2f} % |",
            flush=True,
        )
        for method in args.moments.split(","):
            one_group = functools.partial(
                moments.multiclass,
                hd,
                y,
                mean,
                cov,
                method=method,
                generator=torch.Generator().manual_seed(0),
                check=False,
            )
            ms = _median_ms(one_group, args.repeats, args.warmup)
            mu, var = moments.multiclass(
                h64, y, mean64, cov64, method=method, generator=torch.Generator().manual_seed(0)
            )
            errors = [
                float(((est[:n, 0, dims] - ref[key]).abs() / ref[key].abs()).median())
                for est, key in ((mu, "mu"), (var, "var"))
            ]
            if method == "qmc":
                ht = torch.cat([hd, hd.new_ones(hd.shape[0], 1)], 1)
                c, p = mean.shape
                v = torch.einsum("bp,kpjq,bq->bkj", ht, cov.reshape(c, p, c, p), ht)
                counts = moments.qmc_node_counts(v, c).unique(return_counts=True)
                used = ", ".join(f"{int(k)} ({int(m)} ex.)" for k, m in zip(*counts, strict=True))
            else:
                used = f"{moments.DEFAULT_SAMPLES[method]} draws"
            print(
                f"| {size.name} | {size.batch} | {size.dim} | {group.classes} | {method} | {used} | "
                f"{ms:.2f} | {100 * errors[0]:.2f} % | {100 * errors[1]:.2f} % |",
                flush=True,
            )
            rows.append(
                {
                    "size": size.name,
                    "moments": method,
                    "ms": ms,
                    "mean": errors[0],
                    "var": errors[1],
                }
            )
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--sizes", default=",".join(s.name for s in SIZES))
    parser.add_argument("--moments", default="qmc,rao_blackwell,monte_carlo")
    parser.add_argument("--profile", action="store_true", help="time the stages too")
    parser.add_argument(
        "--accuracy", action="store_true", help="multiclass moments: error and time, no steps"
    )
    parser.add_argument("--reference-samples", type=int, default=2_000_000)
    parser.add_argument("--reference-examples", type=int, default=16)
    parser.add_argument("--reference-dims", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    chosen = [s for s in SIZES if s.name in args.sizes.split(",")]
    if args.accuracy:
        return accuracy(chosen, args)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, CPU ({os.cpu_count()} cores, load average {load}), "
        f"{torch.get_num_threads()} threads, float32, median of {args.repeats} runs after "
        f"{args.warmup}"
    )
    print(
        "| size | B | D | K | moments | BayesAgg step (ms) | plain backward (ms) | ratio "
        "| BayesAgg step, fastest run (ms) | target (median) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    rows = []
    for size in chosen:
        k = sum(g.num_tasks for g in size.groups)
        for method in args.moments.split(","):
            (step, fastest), (plain, _) = time_size(size, method, args.repeats, args.warmup)
            target = TARGETS_MS.get(size.name) if method == "qmc" else None
            verdict = (
                "-"
                if target is None
                else (f"<= {target:g} ms: {'met' if step <= target else 'MISSED'}")
            )
            print(
                f"| {size.name} | {size.batch} | {size.dim} | {k} | {method} | {step:.2f} | "
                f"{plain:.2f} | {step / plain:.1f}x | {fastest:.2f} | {verdict} |",
                flush=True,
            )
            rows.append({"size": size.name, "moments": method, "step_ms": step, "plain_ms": plain})
    if args.profile:
        print("\nStages of the step (pure functions timed alone):")
        for size in chosen:
            for method in args.moments.split(","):
                stages = profile_size(size, method, args.repeats, args.warmup)
                text = ", ".join(f"{name} {ms:.2f} ms" for name, ms in stages.items())
                print(f"- {size.name}, {method}: {text}", flush=True)
    return rows


if __name__ == "__main__":
    main()
