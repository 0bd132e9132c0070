"""How far the Kronecker-factored multiclass posterior's gradient moments are from the dense one's,
on real features.

    nice -n 10 .venv/bin/python scripts/studies/kron_moments.py --data-dir ../shared/data \\
        --benchmarks multimnist,fashion-mtl,utkface --epochs 3

For each benchmark with multiclass tasks, the ``quick`` protocol's model is trained with linear
scalarisation for ``--epochs`` epochs (seed ``--seed``); then, with the trained encoder's
train-mode features of the whole training set, every multiclass head gets the two epoch-level
posteriors BayesAgg-MTL would fit at the end of that epoch (library defaults: one half Newton
step around the trained head from N(0, gamma I)), dense (:func:`bayesagg.posterior.multiclass`)
and factored (:func:`bayesagg.kronecker.posterior`), and for the first ``--batches`` training
batches the batch posteriors with those priors and their gradient moments (mu, var) [B, D]
(the ``qmc`` rule for both). Everything in float64. Reported per head:

- the precision's relative Frobenius error ||P_kron - P_dense|| / ||P_dense|| (batch fits);
- the moments' errors, median and 90th percentile over examples and dimensions:
  |mu_kron - mu_dense| / sqrt(mu_dense^2 + var_dense) and |log(var_kron / var_dense)|
  (the aggregation weights are var^-s, so a log-variance error e changes a weight by about
  s e before normalisation);
- the floor: the same errors between the dense moments with the default rule and with 4096
  nodes for every example (what the integration rule alone contributes);
- the truncation of the factored moments' variances w (``rank_tolerance``) in float32, as in
  training: the rank R kept by default (of C) and the largest errors of the default against
  the untruncated rule (``rank_tolerance=0``), same measures, over all examples and dimensions.
"""

from __future__ import annotations

import argparse
import inspect
import os

import torch
from torch import Tensor

from bayesagg import kronecker, moments
from bayesagg.bayes_agg import BayesAgg
from bayesagg.kronecker import KroneckerPrecision
from bayesagg.newton import newton_posterior
from bayesagg.posterior import isotropic_prior
from bayesagg.runner import RunConfig, plan
from bayesagg.runner.train import make_loader, make_optimizer, split_batch, training_step
from bayesagg.tasks import Multiclass

DT = torch.float64
#: Nodes of the dense rule whose distance to the default rule is the integration floor.
FLOOR_NODES = 4096
DEFAULTS = {
    name: inspect.signature(BayesAgg.__init__).parameters[name].default
    for name in ("gamma", "newton_steps", "newton_damping")
}


def _quantiles(x: Tensor) -> str:
    q = torch.quantile(x.flatten().float(), torch.tensor([0.5, 0.9]))
    return f"{q[0]:.2e} | {q[1]:.2e}"


def _errors(mu: Tensor, var: Tensor, mu_ref: Tensor, var_ref: Tensor) -> tuple[Tensor, Tensor]:
    scale = (mu_ref.square() + var_ref).sqrt().clamp_min(1e-300)
    return (mu - mu_ref).abs() / scale, (
        var.clamp_min(1e-300) / var_ref.clamp_min(1e-300)
    ).log().abs()


def study(benchmark: str, args: argparse.Namespace) -> None:
    p = plan(
        RunConfig(
            benchmark=benchmark,
            method="ls",
            protocol="quick",
            seed=args.seed,
            data_dir=args.data_dir,
        )
    )
    protocol = p.protocol
    if not any(isinstance(group, Multiclass) for group in p.groups):
        kinds = ", ".join(f"{g.name} ({g.kind})" for g in p.groups)
        print(f"\n{benchmark}: no multiclass head ({kinds}): nothing to compare")
        return
    splits = p.spec.load(
        args.data_dir, seed=args.seed, limit=protocol.train_limit, **dict(protocol.data_options)
    )
    torch.manual_seed(args.seed)
    model = p.spec.build_model(p.groups, **dict(protocol.model_options))
    method = p.create_method()
    optimizer = make_optimizer(model, method, protocol)
    loader = make_loader(p.spec, splits.train, protocol.batch_size, shuffle=True, seed=args.seed)
    device = torch.device("cpu")
    model.train()
    for _ in range(args.epochs):
        for batch in loader:
            x, targets = split_batch(p.spec, p.groups, batch, device)
            training_step(model, method, optimizer, p.groups, x, targets)
    features, labels = [], []
    with torch.no_grad():  # train-mode features of the trained encoder, as the epoch prior's
        for batch in loader:
            x, targets = split_batch(p.spec, p.groups, batch, device)
            features.append(model(x)[0].to(DT))
            labels.append(targets)
    h_all = torch.cat(features)
    print(
        f"\n{benchmark}: {args.epochs} LS epochs, {h_all.shape[0]} training examples, D = "
        f"{h_all.shape[1]}"
    )
    print(
        "\n| head | C | precision error | mu error: median | p90 | log-var error: median | p90 "
        "| floor (dense, 4096 nodes) mu: median | log-var: median | R (float32) "
        "| truncation mu: max | log-var: max |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    )
    for i, group in enumerate(p.groups):
        if not isinstance(group, Multiclass):
            continue
        head = model.heads[i]
        weight, bias = head.weight.detach().to(DT), head.bias.detach().to(DT)
        y_all = torch.cat([t[i] for t in labels])
        c, width = group.classes, h_all.shape[1] + 1
        settings = {"steps": DEFAULTS["newton_steps"], "damping": DEFAULTS["newton_damping"]}
        m0, p0 = isotropic_prior("multiclass", c, width, DEFAULTS["gamma"], dtype=DT)
        dense_prior = newton_posterior("multiclass", h_all, y_all, weight, bias, m0, p0, **settings)
        kron_prior = newton_posterior(
            "kron",
            h_all,
            y_all,
            weight,
            bias,
            m0,
            KroneckerPrecision.isotropic(c, width, DEFAULTS["gamma"], dtype=DT),
            **settings,
        )
        precision_errors, mu_errors, var_errors, floor_mu, floor_var = [], [], [], [], []
        cut_mu, cut_var, ranks = [], [], []
        start = 0
        for batch_features in features[: args.batches]:
            h = batch_features
            y = y_all[start : start + h.shape[0]]
            start += h.shape[0]
            dense = newton_posterior(
                "multiclass",
                h,
                y,
                weight,
                bias,
                dense_prior.mean,
                dense_prior.precision,
                **settings,
            )
            kron = newton_posterior(
                "kron", h, y, weight, bias, kron_prior.mean, kron_prior.precision, **settings
            )
            precision_errors.append(
                float((kron.precision.dense() - dense.precision).norm() / dense.precision.norm())
            )
            mu_d, var_d = moments.multiclass(h, y, dense.mean, dense.covariance())
            mu_k, var_k = kronecker.moments(h, y, kron)
            e_mu, e_var = _errors(mu_k, var_k, mu_d, var_d)
            mu_errors.append(e_mu)
            var_errors.append(e_var)
            mu_f, var_f = moments.multiclass(
                h, y, dense.mean, dense.covariance(), num_samples=FLOOR_NODES
            )
            f_mu, f_var = _errors(mu_f, var_f, mu_d, var_d)
            floor_mu.append(f_mu)
            floor_var.append(f_var)
            single = h.float()
            ranks.append(kronecker._low_rank(kron.variances.float(), None)[0].shape[0])
            mu_t, var_t = kronecker.moments(single, y, kron)
            mu_u, var_u = kronecker.moments(single, y, kron, rank_tolerance=0.0)
            t_mu, t_var = _errors(mu_t.double(), var_t.double(), mu_u.double(), var_u.double())
            cut_mu.append(t_mu)
            cut_var.append(t_var)
        print(
            f"| {group.name} | {c} | {sum(precision_errors) / len(precision_errors):.3f} "
            f"| {_quantiles(torch.cat(mu_errors))} | {_quantiles(torch.cat(var_errors))} "
            f"| {torch.cat(floor_mu).median():.2e} | {torch.cat(floor_var).median():.2e} "
            f"| {max(ranks)} | {torch.cat(cut_mu).max():.1e} | {torch.cat(cut_var).max():.1e} |",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default="multimnist,fashion-mtl,utkface")
    parser.add_argument("--data-dir")
    parser.add_argument("--epochs", type=int, default=3, help="LS epochs before the fits")
    parser.add_argument("--batches", type=int, default=2, help="training batches evaluated")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load {load}")
    for benchmark in args.benchmarks.split(","):
        study(benchmark, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
