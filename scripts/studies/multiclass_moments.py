"""Accuracy of the multiclass gradient-moment rules against a 2M-sample Monte-Carlo reference.

    nice -n 10 .venv/bin/python scripts/studies/multiclass_moments.py [--samples 2000000]

For C in {2, 5, 10, 40} and logit posteriors from narrow to wide (median logit standard
deviation 0.1, 0.3, 1 and 3), each rule's moments (mu, var) of g = W^T (softmax(a) - e_y) are
compared with a reference that samples the whole weight matrix W ~ N(mean, cov) in float64 and
forms g explicitly: independent of :mod:`bayesagg.moments`. Reported: the median over examples
and dimensions of |estimate - reference| / |reference|, for the mean and for the variance, and
the reference's own median relative standard error (its noise floor).

Posteriors are those BayesAgg-MTL builds: the Laplace posterior of a random C-class head
(:func:`bayesagg.posterior.multiclass`, unit prior precision, labels drawn from the head's own
softmax), its covariance scaled so that the median logit standard deviation sqrt(V_kk) over the
evaluated examples is the requested width. Rules (docs/bayesagg-math.md, stage 2; all but ``monte_carlo``
integrate the weights analytically given the logits):

- ``qmc`` (the default): the antithetic, moment-matched scrambled-Sobol rule with its
  width-dependent size (:data:`bayesagg.moments.QMC_LEVELS`); ``qmc-N``: the same rule with N
  nodes for every example; ``qmc-base-xF``: F times the rule's smallest size
  (:func:`bayesagg.moments.qmc_base_count`) for every example, one row per level the width
  bounds choose between (``--rules qmc,qmc-base-x1,qmc-base-x4,qmc-base-x16 --tail``);
- ``sigma``: 2C sigma points +-sqrt(C) e_i (degree 3, the unscented rule with kappa = 0);
- ``degree5``: the fully symmetric degree-5 rule (0, +-sqrt(3) e_i, +-sqrt(3) (e_i +- e_j);
  2C^2 + 1 nodes, negative weights once C > 4);
- ``rao_blackwell``: 256 random logit draws; ``monte_carlo``: the paper's 1024 weight draws.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from bayesagg import moments, posterior
from bayesagg.linalg import augment

DT = torch.float64


def laplace_problem(
    classes: int, width: float, *, examples: int = 12, dim: int = 8, seed: int = 0
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Return (h, y, mean, cov) of a Laplace head posterior with median logit sd ``width``."""
    g = torch.Generator().manual_seed(seed)
    fit = max(4 * classes, 32)
    h = F.elu(torch.randn(fit, dim, generator=g, dtype=DT))
    weight = 2 * torch.randn(classes, dim, generator=g, dtype=DT) / math.sqrt(dim)
    bias = torch.zeros(classes, dtype=DT)
    y = torch.multinomial(torch.softmax(h @ weight.T, -1), 1, generator=g)[:, 0]
    p = dim + 1
    post = posterior.multiclass(
        h, y, weight, bias, torch.zeros(classes, p, dtype=DT), torch.eye(classes * p, dtype=DT)
    )
    cov = post.covariance()
    cov = 0.5 * (cov + cov.T)
    h, y = h[:examples], y[:examples]
    ht = augment(h, True)
    blocks = cov.reshape(classes, p, classes, p).diagonal(dim1=0, dim2=2)  # [P, P, C]
    logit_var = torch.einsum("bp,pqk,bq->bk", ht, blocks, ht)
    return h, y, post.mean, cov * (width**2 / logit_var.median())


def reference(
    h: Tensor, y: Tensor, mean: Tensor, cov: Tensor, samples: int, seed: int = 1
) -> dict[str, Tensor]:
    """Return the sample mean/variance of g [B, D] and their standard errors (float64)."""
    c, p = mean.shape
    d = h.shape[1]
    ht = augment(h, p == d + 1)
    factor = torch.linalg.cholesky(cov)
    onehot = F.one_hot(y, c).to(DT)
    g = torch.Generator().manual_seed(seed)
    sums = [torch.zeros(h.shape[0], d, dtype=DT) for _ in range(4)]
    shift = None
    step = max(1, 2**22 // (h.shape[0] * c * p))
    for start in range(0, samples, step):
        s = min(step, samples - start)
        theta = mean.reshape(-1) + torch.randn(s, c * p, generator=g, dtype=DT) @ factor.T
        theta = theta.reshape(s, c, p)
        r = torch.softmax(torch.einsum("scp,bp->sbc", theta, ht), -1) - onehot
        grad = torch.einsum("sbc,scd->sbd", r, theta[..., :d])  # [s, B, D]: g explicitly
        if shift is None:
            shift = grad.mean(0)  # shifted sums keep the raw moments well conditioned
        x = grad - shift
        for k in range(4):
            sums[k] += x.pow(k + 1).sum(0)
    e1, e2, e3, e4 = (t / samples for t in sums)
    var = e2 - e1.square()
    fourth = e4 - 4 * e3 * e1 + 6 * e2 * e1.square() - 3 * e1.pow(4)
    return {
        "mu": shift + e1,
        "var": var,
        "se_mu": (var / samples).sqrt(),
        "se_var": ((fourth - var.square()).clamp_min(0) / samples).sqrt(),
    }


def reference_dims(
    h: Tensor, y: Tensor, mean: Tensor, cov: Tensor, samples: int, dims: Tensor, seed: int = 1
) -> dict[str, Tensor]:
    """:func:`reference` for the dimensions ``dims`` of g only, at a cost that fits big heads.

    Draws (W[:, dims], a_1..a_B) from their exact joint Gaussian (a linear map T of the weight
    vector: mean T m, covariance T cov T^T) instead of the whole C*P weight vector, then forms
    g_d = W[:, d]^T (softmax(a) - e_y) explicitly: the same distribution of g_d, at
    O(S (C |dims| + B C)^2) instead of O(S (C P)^2) (UTKFace's 5 x 257 head).
    """
    c, p = mean.shape
    d = h.shape[1]
    ht = augment(h, p == d + 1)
    b, k = ht.shape[0], dims.numel()
    rows = torch.zeros(c * k + b * c, c * p, dtype=DT)
    for u in range(c):
        rows[u * k + torch.arange(k), u * p + dims] = 1.0  # W[u, dims]
        for i in range(b):
            rows[c * k + i * c + u, u * p : (u + 1) * p] = ht[i]  # a_iu = W[u] . h~_i
    joint_mean = rows @ mean.reshape(-1)
    joint_cov = rows @ cov @ rows.T
    # A symmetric square root: the joint Gaussian is singular when C |dims| + B C > C P.
    values, vectors = torch.linalg.eigh(0.5 * (joint_cov + joint_cov.T))
    factor = vectors * values.clamp_min(0).sqrt()
    onehot = F.one_hot(y, c).to(DT)
    g = torch.Generator().manual_seed(seed)
    sums = [torch.zeros(b, k, dtype=DT) for _ in range(4)]
    shift = None
    step = max(1, 2**22 // (b * c * k))
    for start in range(0, samples, step):
        s = min(step, samples - start)
        draw = joint_mean + torch.randn(s, joint_mean.numel(), generator=g, dtype=DT) @ factor.T
        weights = draw[:, : c * k].reshape(s, c, k)
        r = torch.softmax(draw[:, c * k :].reshape(s, b, c), -1) - onehot
        grad = torch.einsum("sbc,sck->sbk", r, weights)
        if shift is None:
            shift = grad.mean(0)
        x = grad - shift
        for j in range(4):
            sums[j] += x.pow(j + 1).sum(0)
    e1, e2, e3, e4 = (t / samples for t in sums)
    var = e2 - e1.square()
    fourth = e4 - 4 * e3 * e1 + 6 * e2 * e1.square() - 3 * e1.pow(4)
    return {
        "mu": shift + e1,
        "var": var,
        "se_mu": (var / samples).sqrt(),
        "se_var": ((fourth - var.square()).clamp_min(0) / samples).sqrt(),
    }


def sigma_points(classes: int) -> tuple[Tensor, Tensor]:
    eye = torch.eye(classes, dtype=DT) * math.sqrt(classes)
    z = torch.cat([eye, -eye])
    return z, torch.full((2 * classes,), 1 / (2 * classes), dtype=DT)


def degree5(classes: int) -> tuple[Tensor, Tensor]:
    """The fully symmetric degree-5 rule for N(0, I_C) (Stroud): 2C^2 + 1 nodes."""
    lam = math.sqrt(3.0)
    eye = torch.eye(classes, dtype=DT)
    nodes = [torch.zeros(1, classes, dtype=DT), lam * eye, -lam * eye]
    weights = [torch.tensor([1 + (classes**2 - 7 * classes) / 18], dtype=DT)]
    weights += [torch.full((2 * classes,), (4 - classes) / 18, dtype=DT)]
    i, j = torch.triu_indices(classes, classes, 1)
    for si in (1.0, -1.0):
        for sj in (1.0, -1.0):
            pair = torch.zeros(i.numel(), classes, dtype=DT)
            pair[torch.arange(i.numel()), i] = si * lam
            pair[torch.arange(i.numel()), j] = sj * lam
            nodes.append(pair)
            weights.append(torch.full((i.numel(),), 1 / 36, dtype=DT))
    return torch.cat(nodes), torch.cat(weights)


def with_rule(h, y, mean, cov, rule) -> tuple[Tensor, Tensor]:
    """The conditional formulas of the ``qmc`` estimator over another rule (z, weights)."""
    return moments.multiclass(h, y, mean, cov, rule=rule)


def fixed_count(count: int) -> object:
    """Return the ``"qmc"`` rule with ``count`` nodes for every example."""
    return lambda h, y, m, c: moments.multiclass(h, y, m, c, num_samples=count)


def estimators(classes: int) -> dict[str, object]:
    base = moments.qmc_base_count(classes)
    out: dict[str, object] = {
        "qmc": lambda h, y, m, c: moments.multiclass(h, y, m, c),
        "qmc-64": lambda h, y, m, c: moments.multiclass(
            h, y, m, c, num_samples=max(64, 4 * classes)
        ),
        "qmc-256": lambda h, y, m, c: moments.multiclass(h, y, m, c, num_samples=256),
        "qmc-1024": lambda h, y, m, c: moments.multiclass(h, y, m, c, num_samples=1024),
        **{f"qmc-base-x{factor}": fixed_count(base * factor) for factor in (1, 2, 4, 16)},
        "sigma": lambda h, y, m, c: with_rule(h, y, m, c, sigma_points(classes)),
        "degree5": lambda h, y, m, c: with_rule(h, y, m, c, degree5(classes)),
        "rao_blackwell": lambda h, y, m, c: moments.multiclass(
            h, y, m, c, method="rao_blackwell", generator=torch.Generator().manual_seed(0)
        ),
        "monte_carlo": lambda h, y, m, c: moments.multiclass(
            h, y, m, c, method="monte_carlo", generator=torch.Generator().manual_seed(0)
        ),
    }
    return out


def nodes_used(name: str, h, mean, cov, classes: int) -> str:
    if name == "qmc":
        ht = augment(h, True)
        c, p = mean.shape
        v = torch.einsum("bp,kpjq,bq->bkj", ht, cov.reshape(c, p, c, p), ht)
        counts = moments.qmc_node_counts(v, classes)
        return "/".join(str(int(n)) for n in counts.unique())
    sizes = {
        "qmc-64": max(64, 4 * classes),
        "qmc-256": 256,
        "qmc-1024": 1024,
        **{f"qmc-base-x{f}": moments.qmc_base_count(classes) * f for f in (1, 2, 4, 16)},
        "sigma": 2 * classes,
        "degree5": 2 * classes**2 + 1,
        "rao_blackwell": "256 draws",
        "monte_carlo": "1024 draws",
    }
    return str(sizes[name])


def relative(estimate: Tensor, ref: Tensor, q: float = 0.5) -> float:
    """Return the q-quantile over examples and dimensions of |estimate - ref| / |ref|."""
    return float(torch.quantile((estimate - ref).abs() / ref.abs().clamp_min(1e-300), q))


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2_000_000)
    parser.add_argument("--classes", default="2,5,10,40")
    parser.add_argument("--widths", default="0.1,0.3,1,3")
    parser.add_argument("--examples", type=int, default=12)
    parser.add_argument("--dim", type=int, default=8)
    parser.add_argument(
        "--rules", default="qmc,qmc-64,qmc-256,qmc-1024,sigma,degree5,rao_blackwell,monte_carlo"
    )
    parser.add_argument(
        "--tail", action="store_true", help="also report the 90th percentile of the errors"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, float64, {args.examples} examples x D {args.dim}, "
        f"reference {args.samples} weight samples, load average {load}"
    )
    tail = " mean: 90th pct | var: 90th pct |" if args.tail else ""
    print(
        "| C | logit sd | rule | nodes | mean: median rel. error | var: median rel. error |" + tail
    )
    print("|---|---|---|---|---|---|" + "---|---|" * args.tail)
    rows = []
    for classes in (int(c) for c in args.classes.split(",")):
        for width in (float(w) for w in args.widths.split(",")):
            h, y, mean, cov = laplace_problem(
                classes, width, examples=args.examples, dim=args.dim, seed=classes
            )
            began = time.perf_counter()
            ref = reference(h, y, mean, cov, args.samples)
            floor = (
                relative(ref["mu"] + ref["se_mu"], ref["mu"]),
                relative(ref["var"] + ref["se_var"], ref["var"]),
            )
            print(
                f"| {classes} | {width:g} | reference (noise floor) | {args.samples} | "
                f"{100 * floor[0]:.2f} % | {100 * floor[1]:.2f} % |",
                flush=True,
            )
            table = estimators(classes)
            for name in args.rules.split(","):
                mu, var = table[name](h, y, mean, cov)
                errors = (relative(mu[:, 0], ref["mu"]), relative(var[:, 0], ref["var"]))
                tails = (
                    f" {100 * relative(mu[:, 0], ref['mu'], 0.9):.2f} % |"
                    f" {100 * relative(var[:, 0], ref['var'], 0.9):.2f} % |"
                    if args.tail
                    else ""
                )
                print(
                    f"| {classes} | {width:g} | {name} | {nodes_used(name, h, mean, cov, classes)} | "
                    f"{100 * errors[0]:.2f} % | {100 * errors[1]:.2f} % |" + tails,
                    flush=True,
                )
                rows.append(
                    {
                        "classes": classes,
                        "width": width,
                        "rule": name,
                        "mean": errors[0],
                        "var": errors[1],
                    }
                )
            del began
    return rows


if __name__ == "__main__":
    main()
