"""Old against new: the Kronecker-factored moments of an earlier revision next to this tree's, in
one process, alternated, as ratios.

    OMP_NUM_THREADS=1 nice -n 5 .venv/bin/python scripts/timing/kron_moments_speed.py
    .venv/bin/python scripts/timing/kron_moments_speed.py --configs 100,512,256 --repeats 9

For each (C, D, B) of ``--configs`` and each ``--feature-scales`` s, the posterior is the one
BayesAgg-MTL would hand to :func:`bayesagg.kronecker.moments` (as in ``cost_model.py``: a
C-class head on h ~ N(0, s^2 I) with random labels, the epoch prior fitted on 4 batches, then
the batch fit of a fifth batch; float32, library defaults). The moments of ``--old`` (a git
revision's ``src/bayesagg/kronecker.py``, loaded as a module of its own) and of the imported
:mod:`bayesagg.kronecker` run alternately, ``--warmup`` untimed turns then ``--repeats`` timed
ones; printed: the medians (ms), old / new, and the largest differences between the two results
(mean: relative to sqrt(mu^2 + var); variance: relative). On a busy machine only the ratio
means anything. ``--nodes N`` fixes the rule's node count for both (default: the rule's own);
``--new-max-nodes M`` caps the new rule's counts (its ``max_nodes``, an approximation).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from bayesagg import BayesAgg, Multiclass, kronecker

#: The implementation before the rule through the variances' truncated SVD.
DEFAULT_OLD = "9174ecf"
ROOT = Path(__file__).resolve().parents[2]


def load_revision(revision: str) -> ModuleType:
    """Return ``src/bayesagg/kronecker.py`` of a git revision as a module ``kronecker_<rev>``."""
    source = subprocess.run(
        ["git", "show", f"{revision}:src/bayesagg/kronecker.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    name = f"kronecker_{revision.replace('~', '_').replace('^', '_')}"
    spec = importlib.util.spec_from_loader(name, loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    exec(compile(source, f"{revision}:kronecker.py", "exec"), module.__dict__)
    return module


def batch_posterior(c: int, d: int, b: int, scale: float) -> tuple[Any, ...]:
    """Return (h, y, post) of one batch as BayesAgg-MTL's multiclass_posterior='kron' sees it."""
    torch.manual_seed(0)
    head = nn.ModuleList([nn.Linear(d, c)])
    agg = BayesAgg([Multiclass("t", c)], multiclass_posterior="kron")

    def batch() -> tuple[torch.Tensor, list[torch.Tensor]]:
        return (scale * torch.randn(b, d)).requires_grad_(), [torch.randint(0, c, (b,))]

    for _ in range(4):  # the epoch the prior is fitted on
        h, targets = batch()
        agg.backward(h, head, targets)
    agg.end_epoch(head)
    captured: list[tuple[Any, ...]] = []
    original = kronecker.moments

    def spy(h: torch.Tensor, y: torch.Tensor, post: Any, **options: Any) -> Any:
        captured.append((h.detach().clone(), y.clone(), post))
        return original(h, y, post, **options)

    kronecker.moments = spy  # type: ignore[assignment]
    try:
        h, targets = batch()
        agg.backward(h, head, targets)
    finally:
        kronecker.moments = original  # type: ignore[assignment]
    return captured[0]


def compare(old: ModuleType, config: tuple[int, int, int], scale: float, args: Any) -> str:
    c, d, b = config
    h, y, post = batch_posterior(c, d, b, scale)
    options = {} if args.nodes is None else {"num_samples": args.nodes}
    new_options = dict(options)
    if args.new_max_nodes is not None:
        new_options["max_nodes"] = args.new_max_nodes

    def timed(module: ModuleType) -> tuple[float, tuple[torch.Tensor, torch.Tensor]]:
        began = time.perf_counter()
        result = module.moments(h, y, post, **(new_options if module is kronecker else options))
        return 1000 * (time.perf_counter() - began), result

    for _ in range(args.warmup):
        timed(old), timed(kronecker)
    old_ms, new_ms = [], []
    for _ in range(args.repeats):
        ms, (mu_old, var_old) = timed(old)
        old_ms.append(ms)
        ms, (mu_new, var_new) = timed(kronecker)
        new_ms.append(ms)
    scale_mu = (mu_old.square() + var_old).sqrt().clamp_min(1e-30)
    mu_err = ((mu_new - mu_old).abs() / scale_mu).max().item()
    var_err = ((var_new - var_old).abs() / var_old.clamp_min(1e-30)).max().item()
    o, n = statistics.median(old_ms), statistics.median(new_ms)
    return (
        f"| {c} | {d} | {b} | {scale:g} | {o:.1f} | {n:.1f} | {o / n:.2f} | "
        f"{mu_err:.1e} | {var_err:.1e} |"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="10,50,256;100,512,256", help="C,D,B;C,D,B;...")
    parser.add_argument("--feature-scales", default="1.0,0.1")
    parser.add_argument("--old", default=DEFAULT_OLD, help="git revision of the old rule")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--nodes", type=int, default=None)
    parser.add_argument("--new-max-nodes", type=int, default=None)
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be >= 1")
    configs = [tuple(int(x) for x in part.split(",")) for part in args.configs.split(";")]
    if any(len(config) != 3 for config in configs):
        parser.error(f"--configs must be C,D,B triples separated by ';', got {args.configs!r}")
    old = load_revision(args.old)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, old = {args.old}, "
        f"medians of {args.repeats} alternated turns after {args.warmup}, float32"
    )
    print(
        "\n| C | D | B | feature scale | old (ms) | new (ms) | old / new | mean diff | var diff |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for config in configs:
        for scale in (float(s) for s in args.feature_scales.split(",")):
            print(compare(old, config, scale, args), flush=True)  # type: ignore[arg-type]
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
