"""The cost of one BayesAgg-MTL step with multiclass heads, dense and Kronecker-factored, next to LS.

    nice -n 10 .venv/bin/python scripts/timing/cost_model.py --json results/kron/cost_model.json \\
        --plot docs/figures/cost_model.png
    nice -n 10 .venv/bin/python scripts/timing/cost_model.py --classes 100 --dims 512 \\
        --batches 32,256 --tasks 2 --encoder

A configuration is K multiclass tasks of C classes, each a linear head on D features, and a
batch of B examples (default grid: C in {2, 10, 100, 1000}, D in {64, 512}, B in {32, 256},
K in {2, 10, 40}). Each runs in a fresh process of its own, which reports:

- ``ls``: linear scalarisation's backward through the heads (the heads' forward, the K
  cross-entropies, ``losses.sum().backward()``), on a leaf h [B, D] standing for the encoder's
  output (the encoder's own backward is the same for both methods: see ``--encoder``);
- ``bayesagg``: ``BayesAgg.backward(h, heads, targets)`` after the warm-up with an epoch prior
  fitted on 4 earlier batches (library defaults, ``multiclass_posterior`` dense or kron), and its
  stages: ``posterior`` (the batch fits) and ``moments`` (the gradient moments); the rest is the
  aggregation, the backward and bookkeeping;
- ``refit``: the end-of-epoch prior refit on those 4 batches (paid once per epoch);
- the features are h ~ N(0, s^2 I) (``--feature-scale`` s, default 1) with random labels: the
  wider the logits, the more nodes the moment rule takes (up to 16x its base count);
- ``peak MiB``: the process's peak resident memory above what it held before the
  configuration was built (CPU), or ``torch.cuda.max_memory_allocated`` (``--device cuda``).

Times are medians over ``--repeats`` alternated LS/BayesAgg turns after ``--warmup`` untimed
ones. A configuration whose estimated memory (``--max-gib``) or time (``--max-seconds``, at an
assumed ``--gflops`` rate) is over the limit is not tried: its row says why. ``--encoder``
also times one training step of a ResNet-18 (32 x 32 images, the 512-feature encoder of the
image benchmarks, its last layer mapping to D) at each batch size, and prints the whole step's
ratio, (encoder + BayesAgg) / (encoder + LS).
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import resource
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import bayesagg.bayes_agg as bayes_agg_module
from bayesagg import BayesAgg, Multiclass, kronecker, moments

FORMS = ("dense", "kron")


def _base_nodes(classes: int) -> int:
    """The qmc rule's smallest node count for C classes (bayesagg.moments' rule)."""
    return 1 << (max(64, 4 * classes, -(-640 // classes)) - 1).bit_length()


def estimate(form: str, c: int, d: int, b: int, k: int) -> tuple[float, float]:
    """Return (GiB, flops) of one step, rough: the largest terms of each form's stages."""
    p = d + 1
    if form == "dense":
        n = c * p
        memory = 8 * n * n * 4 + 4 * b * c * c * p  # precision copies, factor, covariance
        flops = k * (
            b * n * n + n**3 * 4 / 3 + b * c * c * p * p * 2 + b * _base_nodes(c) * d * c * c
        )
    else:
        nodes = _base_nodes(c)
        memory = 4 * (8 * c * c + 4 * p * p + 2**18 * 8)
        flops = k * (b * (8 * c * c * nodes + 4 * d * c * c + 2 * d * p * c) + 10 * (p**3 + c**3))
    return memory / 2**30, float(flops)


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _median_ms(fn: Callable[[], Any], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        fn()
        times.append(time.perf_counter() - began)
    return 1000 * statistics.median(times)


class _Stages:
    """Wraps the posterior and moment functions BayesAgg calls, adding up their seconds."""

    def __init__(self) -> None:
        self.seconds = {"posterior": 0.0, "moments": 0.0}
        self._saved: list[tuple[Any, str, Any]] = []

    def _wrap(self, owner: Any, name: str, stage: str) -> None:
        original = getattr(owner, name)

        def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds[stage] += time.perf_counter() - began

        self._saved.append((owner, name, original))
        setattr(owner, name, timed)

    def __enter__(self) -> _Stages:
        self._wrap(bayes_agg_module, "newton_posterior", "posterior")
        self._wrap(bayes_agg_module, "stacked_kron_posterior", "posterior")  # equal heads
        self._wrap(moments, "multiclass", "moments")
        self._wrap(kronecker, "stacked_moments", "moments")  # kronecker.moments calls it too
        return self

    def __exit__(self, *exc: object) -> None:
        for owner, name, original in reversed(self._saved):
            setattr(owner, name, original)


def measure(config: dict[str, Any], repeats: int, warmup: int, device: str) -> dict[str, Any]:
    """Time one configuration (in the calling process); return its row."""
    c, d, b, k, form = (config[key] for key in ("classes", "dim", "batch", "tasks", "form"))
    torch.manual_seed(0)
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    before = _rss_mib()
    groups = [Multiclass(f"t{i}", c) for i in range(k)]
    heads = nn.ModuleList([nn.Linear(d, c) for _ in range(k)]).to(dev)
    cap = config.get("nodes_per_class")
    agg = BayesAgg(
        groups, multiclass_posterior=form, max_moment_nodes=None if cap is None else cap * c
    )

    def batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
        h = (config["feature_scale"] * torch.randn(b, d, device=dev)).requires_grad_()
        return h, [torch.randint(0, c, (b,), device=dev) for _ in range(k)]

    for _ in range(4):  # the epoch the prior is fitted on
        h, targets = batch()
        agg.backward(h, heads, targets)
    began = time.perf_counter()
    agg.end_epoch(heads)
    refit = time.perf_counter() - began
    h, targets = batch()

    def ls() -> None:
        h.grad = None
        heads.zero_grad(set_to_none=True)
        sum(
            nn.functional.cross_entropy(head(h), y) for head, y in zip(heads, targets, strict=True)
        ).backward()

    def ours() -> None:
        h.grad = None
        heads.zero_grad(set_to_none=True)
        agg.backward(h, heads, targets)

    def sync(fn: Callable[[], None]) -> Callable[[], None]:
        """Return ``fn`` waiting for the device, so that a timing covers its kernels."""
        if dev.type != "cuda":
            return fn

        def synced() -> None:
            fn()
            torch.cuda.synchronize(dev)

        return synced

    for _ in range(warmup):
        ls(), ours()
    ls_times, our_times = [], []
    with _Stages() as stages:
        for _ in range(repeats):
            ls_times.append(_median_ms(sync(ls), 1))
            our_times.append(_median_ms(sync(ours), 1))
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated(dev) / 2**20
    else:
        peak = _rss_mib() - before
    return {
        **config,
        "ls_ms": statistics.median(ls_times),
        "bayesagg_ms": statistics.median(our_times),
        "posterior_ms": 1000 * stages.seconds["posterior"] / repeats,
        "moments_ms": 1000 * stages.seconds["moments"] / repeats,
        "refit_ms": 1000 * refit,
        "peak_mib": peak,
    }


def _child(
    config: dict[str, Any], repeats: int, warmup: int, device: str, threads: int, queue: Any
) -> None:
    torch.set_num_threads(threads)  # the parent's: a fresh process starts with its own
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            queue.put(measure(config, repeats, warmup, device))
    except Exception as err:  # reported in the row, never swallowed silently
        queue.put({**config, "error": f"{type(err).__name__}: {err}"})


def run_config(config: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Measure ``config`` in a fresh process, or say why it is not tried."""
    gib, flops = estimate(
        config["form"], config["classes"], config["dim"], config["batch"], config["tasks"]
    )
    seconds = flops / (args.gflops * 1e9) * (args.repeats + args.warmup + 6)
    if gib > args.max_gib:
        return {**config, "skipped": f"needs ~{gib:.0f} GiB (> --max-gib {args.max_gib:g})"}
    if seconds > args.max_seconds:
        return {
            **config,
            "skipped": f"~{seconds:.0f} s estimated (> --max-seconds {args.max_seconds:g})",
        }
    # spawn, not fork: a process forked after torch's OpenMP threads started can deadlock.
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(
        target=_child,
        args=(config, args.repeats, args.warmup, args.device, torch.get_num_threads(), queue),
    )
    process.start()
    try:
        row = queue.get(timeout=max(args.max_seconds * 4, 60))
    except Exception:  # the child died (memory) or hung
        process.kill()
        row = {**config, "error": f"no result (exit code {process.exitcode})"}
    process.join()
    return row


def encoder_ms(batch: int, dim: int, repeats: int, device: str) -> float:
    """Median ms of one ResNet-18 training step's forward and backward (32 x 32 images)."""
    from bayesagg.benchmarks.utkface.model import resnet_encoder

    torch.manual_seed(0)
    net = resnet_encoder("resnet18", dim).to(device)
    x = torch.randn(batch, 3, 32, 32, device=device)

    def step() -> None:
        net.zero_grad(set_to_none=True)
        net(x).sum().backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    step()
    return _median_ms(step, repeats)


def _row(r: dict[str, Any], encoders: dict[tuple[int, int], float]) -> str:
    head = f"| {r['form']} | {r['classes']} | {r['dim']} | {r['batch']} | {r['tasks']} "
    if "skipped" in r or "error" in r:
        return head + f"| {r.get('skipped') or r.get('error')} | | | | | | | |"
    ratio = r["bayesagg_ms"] / r["ls_ms"]
    whole = ""
    enc = encoders.get((r["batch"], r["dim"]))
    if enc is not None:
        whole = f"{(enc + r['bayesagg_ms']) / (enc + r['ls_ms']):.2f}"
    return (
        head
        + f"| {r['ls_ms']:.2f} | {r['bayesagg_ms']:.1f} | {ratio:.1f} | {r['posterior_ms']:.1f} "
        f"| {r['moments_ms']:.1f} | {r['refit_ms']:.0f} | {r['peak_mib']:.0f} | {whole} |"
    )


def plot(rows: list[dict[str, Any]], encoders: dict[tuple[int, int], float], path: str) -> None:
    """BayesAgg step time against C, per D and form, at the largest B and smallest K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in rows if "bayesagg_ms" in r]
    if not done:
        return
    b, k = max(r["batch"] for r in done), min(r["tasks"] for r in done)
    fig, ax = plt.subplots(figsize=(6, 4))
    for dim, form in itertools.product(sorted({r["dim"] for r in done}), FORMS):
        points = sorted(
            (r["classes"], r["bayesagg_ms"])
            for r in done
            if (r["dim"], r["form"], r["batch"], r["tasks"]) == (dim, form, b, k)
        )
        if points:
            ax.plot(
                *zip(*points, strict=True),
                marker="o",
                ls="-" if form == "kron" else "--",
                label=f"BayesAgg {form}, D={dim}",
            )
    for dim in sorted({r["dim"] for r in done}):
        ls_points = sorted(
            (r["classes"], r["ls_ms"])
            for r in done
            if (r["dim"], r["form"], r["batch"], r["tasks"]) == (dim, "kron", b, k)
        )
        if ls_points:
            ax.plot(*zip(*ls_points, strict=True), color="grey", lw=1, label=f"LS heads, D={dim}")
        if (b, dim) in encoders:
            ax.axhline(encoders[(b, dim)], color="black", lw=0.8, ls=":")
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="classes C",
        ylabel="ms per step",
        title=f"B={b}, K={k} tasks (dotted: a ResNet-18 step)",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", default="2,10,100,1000")
    parser.add_argument("--dims", default="64,512")
    parser.add_argument("--batches", default="32,256")
    parser.add_argument("--tasks", default="2,10,40")
    parser.add_argument("--forms", default=",".join(FORMS))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--max-gib", type=float, default=8.0)
    parser.add_argument("--max-seconds", type=float, default=120.0)
    parser.add_argument("--gflops", type=float, default=20.0, help="assumed rate of estimates")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--feature-scale",
        type=float,
        default=1.0,
        help="features h ~ N(0, scale^2 I): the logits' width, hence the rule's node count",
    )
    parser.add_argument(
        "--nodes-per-class",
        type=int,
        help="BayesAgg's max_moment_nodes as this many nodes per class (an approximation; "
        "default: the rule's own count)",
    )
    parser.add_argument("--encoder", action="store_true", help="also time a ResNet-18 step")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--plot", help="write the figure here (PNG)")
    args = parser.parse_args(argv)
    ints = {
        key: [int(v) for v in getattr(args, key).split(",")]
        for key in ("classes", "dims", "batches", "tasks")
    }
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}, "
        f"device {args.device}; medians of {args.repeats} alternated turns"
        + (
            f"; moment rule capped at {args.nodes_per_class} nodes per class"
            if args.nodes_per_class
            else ""
        )
    )
    encoders: dict[tuple[int, int], float] = {}
    if args.encoder:
        for b, d in itertools.product(ints["batches"], ints["dims"]):
            encoders[(b, d)] = encoder_ms(b, d, args.repeats, args.device)
            print(f"ResNet-18 step (32 x 32, B={b}, D={d}): {encoders[(b, d)]:.0f} ms")
    print(
        "\n| form | C | D | B | K | LS heads (ms) | BayesAgg (ms) | ratio | posterior (ms) "
        "| moments (ms) | refit (ms) | peak MiB | whole step ratio (ResNet-18) |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    rows = []
    for c, d, b, k, form in itertools.product(
        ints["classes"], ints["dims"], ints["batches"], ints["tasks"], args.forms.split(",")
    ):
        config = {"form": form, "classes": c, "dim": d, "batch": b, "tasks": k}
        options = {"feature_scale": args.feature_scale, "nodes_per_class": args.nodes_per_class}
        row = run_config({**config, **options}, args)
        rows.append(row)
        print(_row(row, encoders), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {"encoder_ms": {f"{b},{d}": v for (b, d), v in encoders.items()}, "rows": rows},
                f,
                indent=1,
            )
    if args.plot:
        plot(rows, encoders, args.plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
