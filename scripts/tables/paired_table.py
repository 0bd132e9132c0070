"""Delta_m of runs against a baseline's, seed by seed, with the paired 95 % interval.

For a check on seeds nobody tuned on, where the runs to compare live in different folders
(e.g. an ablation folder against the campaign's LS runs): each ``--runs`` folder holds
``seed<N>/result.json``; the table lists each seed's Delta_m (``--split``, default test) of every
folder and the mean difference of each to the first, with the Student-t interval that
``bayesagg summary`` uses (:func:`bayesagg.app.summary.paired_interval`).

    python scripts/tables/paired_table.py --seeds 3,4,5 \\
        results/qm9/quick/ls "results/ablation/qm9/quick/bayesagg_regression_fit=refit_regression_prior=evidence"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bayesagg.app.summary import paired_interval
from bayesagg.runner.results import RESULT_FILE, UnreadableResult, read_result


def _delta(folder: Path, seed: int, split: str) -> float:
    path = folder / f"seed{seed}" / RESULT_FILE
    if not path.is_file():
        raise SystemExit(f"paired_table: no finished run at {path}")
    try:
        delta = read_result(path)["delta_m"]
    except UnreadableResult as err:
        raise SystemExit(f"paired_table: {err}") from None
    value = None if delta is None else delta[split]
    if value is None:
        raise SystemExit(f"paired_table: {path} has no {split} Delta_m")
    return float(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="baseline first, then the others")
    parser.add_argument("--seeds", required=True, help="comma-separated seeds")
    parser.add_argument("--split", default="test", choices=("test", "val"))
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    table = {f: {s: _delta(f, s, args.split) for s in seeds} for f in args.folders}
    base = args.folders[0]
    print(f"| runs | {' | '.join(f'seed {s}' for s in seeds)} | mean | vs {base.name} (95 % CI) |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for folder, values in table.items():
        mean = sum(values.values()) / len(values)
        if folder == base:
            paired = "-"
        else:
            interval = paired_interval(values, table[base])
            paired = (
                "-"
                if interval is None
                else (f"{interval[0]:+.1f} [{interval[1]:+.1f}, {interval[2]:+.1f}]")
            )
        cells = " | ".join(f"{values[s]:.1f}" for s in seeds)
        print(f"| {folder} | {cells} | {mean:.1f} | {paired} |")
    print()
    print(f"Delta_m % on {args.split}, lower is better; each run's own references (result.json).")


if __name__ == "__main__":
    main(sys.argv[1:])
