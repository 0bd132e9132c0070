"""How much BayesAgg-MTL's full-data prior shrinks the QM9 regression heads at a small budget.

After every epoch from the warm-up on, the runner sets each regression head to the posterior
mean of Bayesian linear regression on the epoch's features, with the prior N(0, gamma I) and
noise variance sigma^2 = 1 (``regression_fit="epoch"``, the authors' UTKFace trainer; paper Eq. 2). On QM9
gamma is this project's choice (5e-3, unpublished), i.e. a prior precision of 200 per weight.
This script trains the first epochs of ``bayesagg`` on QM9 ``quick`` exactly as the campaign's
run does (same seed, data order, warm-up), then fits each head again on the training features
with several prior precisions and prints the training MSE (standardised targets) of each fit
next to the live head's, and the spectrum of H^T H that the prior competes with.

    python scripts/studies/qm9_head_shrinkage.py --epochs 7 --seed 0 --data-dir ../shared/data
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from bayesagg import posterior
from bayesagg.runner.config import RunConfig
from bayesagg.runner.plan import plan
from bayesagg.runner.splits import load_splits
from bayesagg.runner.train import deterministic, make_loader, seed_everything, train

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=7, help="epochs to train (warm-up: 4)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument(
        "--references",
        default=str(ROOT / "results/qm9/quick/selection_references.json"),
        help="STL references of the selection criterion (the campaign's)",
    )
    parser.add_argument("--precisions", default="10,1,0.1,0", help="prior precisions to compare")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    config = RunConfig(
        benchmark="qm9",
        method="bayesagg",
        seed=args.seed,
        protocol="quick",
        epochs=args.epochs,
        # the 24-epoch protocol's warm-up, so these epochs are that run's first ones
        hparams={"warmup_epochs": 4},
        references=args.references,
        data_dir=args.data_dir,
        out=tempfile.mkdtemp(),
    )
    p = plan(config)
    splits = load_splits(p)  # the runner's splits, val capped as in the run
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
    features, targets = [], []
    with torch.no_grad():
        for batch in make_loader(p.spec, splits.train, 256, shuffle=False, seed=0):
            features.append(model.encoder(batch).double())
            targets.append(batch.y.double())
    H, Y = torch.cat(features), torch.cat(targets)
    Y = (Y - Y.mean(0)) / Y.std(0)  # the runner standardises with the training set's statistics
    head = model.heads[0]
    live = H @ head.weight.double().T
    if head.bias is not None:
        live = live + head.bias.double()

    gamma = float(p.hparams["gamma"])
    noise_var = float(p.hparams.get("noise_var", 1.0))
    hth, hty = H.T @ H, H.T @ Y
    eig = torch.linalg.eigvalsh(hth / noise_var)
    rows = [("live head (what the model predicts)", ((live - Y) ** 2).mean(0))]
    for precision in [1 / gamma, *(float(v) for v in args.precisions.split(","))]:
        if precision > 0:  # the library's full-data fit (paper Eq. 2) with prior N(0, I/precision)
            prior_mean, prior_precision = posterior.isotropic_prior(
                "regression", Y.shape[1], H.shape[1], 1 / precision, dtype=H.dtype
            )
            fitted = posterior.regression_from_statistics(
                hth, hty, prior_mean, prior_precision, noise_var=noise_var
            )
            prediction = H @ fitted.mean.T
            dof = float(posterior.effective_parameters(fitted, precision))
            label = f"refit, prior precision {precision:g}, {dof:.1f} effective weights"
        else:  # no prior: least squares
            prediction = H @ torch.linalg.lstsq(H, Y).solution
            label = "least squares (no prior)"
        if precision == 1 / gamma:
            label += f" (1/gamma, gamma {gamma:g}: the run's fit)"
        rows.append((label, ((prediction - Y) ** 2).mean(0)))

    print(f"QM9 quick, bayesagg, seed {config.seed}, after {args.epochs} epochs (warm-up 4)")
    print(
        f"{len(H)} training molecules, D = {H.shape[1]}; eigenvalues of H^T H / sigma^2: ", end=""
    )
    print(f"max {eig[-1]:.3g}, median {eig.median():.3g}, {int((eig > 1 / gamma).sum())} of")
    print(f"{len(eig)} above 1/gamma = {1 / gamma:g}")
    print()
    print("| training MSE (standardised) | " + " | ".join(p.names) + " |")
    print("|---|" + "---|" * len(p.names))
    for label, mse in rows:
        print(f"| {label} | " + " | ".join(f"{v:.3f}" for v in mse.tolist()) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
