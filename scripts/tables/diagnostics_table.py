"""Print a BayesAgg-MTL run's per-epoch diagnostics (``diag/`` columns of epochs.csv) as markdown.

    python scripts/tables/diagnostics_table.py RUN_DIR/epochs.csv [--plot out.png]

Columns: epoch, whether it was a warm-up epoch, cos(BayesAgg, LS) of the encoder gradient, and
per classification group the batch posterior mean's and the prior mean's distance to the live
head (relative to ||live head||), and the training loss at the live head, the batch posterior
mean and the prior mean; then the run's validation criterion (and, for up to 3 tasks, each task's accuracy).
See ``bayesagg.diagnostics`` for the definitions.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bayesagg.runner.results import read_epochs


def _groups(header: list[str]) -> list[str]:
    return sorted({k.split("/", 2)[2] for k in header if k.startswith("diag/head_distance/")})


def table(rows: list[dict[str, str]]) -> str:
    """Return the markdown table of the diagnostics of ``rows`` (epochs.csv rows)."""
    header = list(rows[0])
    groups = _groups(header)
    # The run's validation criterion (the fifth column of epochs.csv), then, for a few tasks,
    # each task's validation accuracy.
    val = [header[4]]
    tasks = [k for k in header if k.startswith("val/") and k.endswith("/accuracy") and k != val[0]]
    if len(tasks) <= 3:
        val += tasks
    cols = ["epoch", "warm-up", "cos(agg, LS)"]
    for g in groups:
        cols += [
            f"dist post {g}",
            f"dist prior {g}",
            f"loss live {g}",
            f"loss post {g}",
            f"loss prior {g}",
        ]
    cols += val
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = [r["epoch"], "yes" if float(r.get("diag/in_warmup") or 0) else "no"]
        cells.append(f"{float(r['diag/cosine_ls']):.3f}")
        for g in groups:
            for key in (
                "head_distance",
                "prior_distance",
                "loss_live",
                "loss_posterior",
                "loss_prior",
            ):
                cells.append(f"{float(r[f'diag/{key}/{g}']):.3f}")
        cells += [f"{float(r[k]):.4f}" for k in val]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: list[dict[str, str]], out: Path) -> None:
    """Write cosine, distances and losses per epoch to ``out`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [int(r["epoch"]) for r in rows]
    groups = _groups(list(rows[0]))
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.5))
    axes[0].plot(epochs, [float(r["diag/cosine_ls"]) for r in rows], marker="o")
    axes[0].set_title("cos(BayesAgg-MTL, LS) of the encoder gradient")
    for g in groups:
        axes[1].plot(
            epochs,
            [float(r[f"diag/head_distance/{g}"]) for r in rows],
            marker="o",
            label=f"batch posterior, {g}",
        )
        axes[1].plot(
            epochs,
            [float(r[f"diag/prior_distance/{g}"]) for r in rows],
            ls="--",
            label=f"prior, {g}",
        )
        for key, style in (("loss_live", "-"), ("loss_posterior", "--"), ("loss_prior", ":")):
            axes[2].plot(
                epochs,
                [float(r[f"diag/{key}/{g}"]) for r in rows],
                ls=style,
                label=f"{key[5:]}, {g}",
            )
    axes[1].set_title("||mean - live head|| / ||live head||")
    axes[2].set_title("training loss on the measured batches")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
    axes[1].legend(fontsize=7)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("epochs_csv", type=Path)
    parser.add_argument("--plot", type=Path, default=None, help="also write a PNG here")
    args = parser.parse_args()
    rows = read_epochs(args.epochs_csv)
    if not rows or "diag/cosine_ls" not in rows[0]:
        raise SystemExit(f"{args.epochs_csv}: no diag/ columns (not a BayesAgg-MTL run?)")
    print(table(rows))
    if args.plot is not None:
        plot(rows, args.plot)


if __name__ == "__main__":
    main()
