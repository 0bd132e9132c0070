"""Print each method's training loss per task at the last epoch, mean over seeds.

    python scripts/tables/train_loss_table.py results/qm9/quick ls uw imtl-g-ub bayesagg bayesagg-paper

Reads ``<folder>/<method>/seed<N>/epochs.csv`` (the ``train_loss/<task>`` columns: the mean
loss of the epoch's training batches, standardised targets on QM9). A method whose losses stay
high while another's fall is under-fitting, which test metrics alone do not tell apart from
over-fitting.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bayesagg.runner.results import EPOCH_FILE, read_epochs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a protocol folder, e.g. results/qm9/quick")
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--seeds", default="0,1,2")
    args = parser.parse_args()
    header: list[str] | None = None
    lines = []
    for method in args.methods:
        last_rows = []
        for seed in args.seeds.split(","):
            path = args.folder / method / f"seed{seed}" / EPOCH_FILE
            if path.is_file():
                last_rows.append(read_epochs(path)[-1])
        if not last_rows:
            lines.append(f"| {method} | no epochs.csv for seeds {args.seeds} |")
            continue
        tasks = [k.removeprefix("train_loss/") for k in last_rows[0] if k.startswith("train_loss/")]
        header = header or tasks
        cells = [statistics.fmean(float(r[f"train_loss/{t}"]) for r in last_rows) for t in header]
        lines.append(
            f"| {method} | " + " | ".join(f"{v:.2f}" for v in cells) + f" | {len(last_rows)} |"
        )
    if header is None:
        raise SystemExit(f"{args.folder}: no epochs.csv for {', '.join(args.methods)}")
    print("| method | " + " | ".join(header) + " | seeds |")
    print("|---|" + "---|" * (len(header) + 1))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
