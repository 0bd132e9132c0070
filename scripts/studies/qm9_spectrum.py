"""Is the QM9 head shrinkage a small-data effect? The spectrum of H^T H against 1/gamma by size.

The published BayesAgg-MTL sets every regression head to the posterior mean of Bayesian linear
regression on the training features with the prior N(0, gamma I) and noise variance 1 (paper
Eq. 2; gamma 5e-3 here, unpublished for QM9). A direction of H^T H whose eigenvalue is below
the prior precision 1/gamma is shrunk towards zero. This script trains ``bayesagg-paper`` on
QM9 ``quick`` (2,000 molecules, as the campaign's run), then, inference only, computes the
features of the first 2k, 8k, 32k and all ~110k training molecules of the same split (eval
mode) and prints for each size: how many of the D eigenvalues exceed 1/gamma, their median,
the effective number of weights of the gamma fit (PRML Eq. 3.91), its training MSE (targets
standardised with that subset's statistics) next to least squares', and the evidence
maximiser (alpha, beta; :mod:`bayesagg.evidence`).

    python scripts/studies/qm9_spectrum.py --seed 0 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bayesagg import posterior
from bayesagg.evidence import maximise_evidence
from bayesagg.runner.config import RunConfig
from bayesagg.runner.plan import plan
from bayesagg.runner.splits import load_splits
from bayesagg.runner.train import deterministic, make_loader, seed_everything, train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=24, help="training epochs (quick: 24)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--sizes", default="2000,8000,32000,all", help="training-set sizes")
    parser.add_argument(
        "--references",
        default=str(ROOT / "results/qm9/quick/selection_references.json"),
        help="STL references of the selection criterion (the campaign's)",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    config = RunConfig(
        benchmark="qm9",
        method="bayesagg-paper",
        seed=args.seed,
        protocol="quick",
        epochs=args.epochs,
        references=args.references,
        data_dir=args.data_dir,
        out=tempfile.mkdtemp(),
    )
    p = plan(config)
    splits = load_splits(p)
    with deterministic():
        seed_everything(config.seed)
        model = p.spec.build_model(p.groups, **dict(p.protocol.model_options))
        method = p.create_method(None)
        train(
            plan=p,
            splits=splits,
            model=model,
            method=method,
            criterion=p.criterion(),
            device=torch.device("cpu"),
            diagnostics=False,
        )
    model.eval()
    gamma = float(p.hparams["gamma"])

    # The same seeded split without the 2,000-molecule cap: the quick run's training molecules
    # are the first 2,000 of this training split.
    full = p.spec.load(
        args.data_dir, seed=config.seed, limit=None, **dict(p.protocol.data_options)
    ).train
    sizes = [len(full) if s == "all" else min(int(s), len(full)) for s in args.sizes.split(",")]
    subset = torch.utils.data.Subset(full, range(max(sizes)))
    features, targets = [], []
    with torch.no_grad():
        for batch in make_loader(p.spec, subset, 512, shuffle=False, seed=0):
            features.append(model.encoder(batch).double())
            targets.append(batch.y.double())
    h_all, y_all = torch.cat(features), torch.cat(targets)

    print(
        f"QM9 quick, bayesagg-paper, seed {config.seed}, encoder trained {args.epochs} epochs "
        f"on {len(splits.train)} molecules; gamma {gamma:g} (prior precision {1 / gamma:g}), "
        f"noise variance 1; D = {h_all.shape[1]}"
    )
    print()
    print(
        "| training molecules | eigenvalues > 1/gamma | median eigenvalue | max eigenvalue "
        "| effective weights (gamma fit) | train MSE, gamma fit | train MSE, least squares "
        "| evidence alpha | evidence beta | effective weights (evidence) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        h, y = h_all[:n], y_all[:n]
        y = (y - y.mean(0)) / y.std(0)
        hth, hty = h.T @ h, h.T @ y
        eig = torch.linalg.eigvalsh(hth)
        mean0, prec0 = posterior.isotropic_prior(
            "regression", y.shape[1], h.shape[1], gamma, dtype=h.dtype
        )
        fit = posterior.regression_from_statistics(hth, hty, mean0, prec0, noise_var=1.0)
        dof = float(posterior.effective_parameters(fit, 1 / gamma))
        mse_fit = float(((h @ fit.mean.T - y) ** 2).mean())
        mse_ls = float(((h @ torch.linalg.lstsq(h, y).solution - y) ** 2).mean())
        ev = maximise_evidence(hth, hty, y.square().sum(0), n)
        print(
            f"| {n:,} | {int((eig > 1 / gamma).sum())} of {len(eig)} | {float(eig.median()):.3g} "
            f"| {float(eig[-1]):.3g} | {dof:.1f} | {mse_fit:.3f} | {mse_ls:.3f} "
            f"| {ev.prior_precision:.3g} | {ev.noise_precision:.3g} | {ev.effective_parameters:.1f} |"
        )
    print()
    print("MSE: mean over the 11 standardised targets and the molecules of each subset.")


if __name__ == "__main__":
    main(sys.argv[1:])
