"""Where one epoch of each benchmark's ``quick`` protocol goes: steps, loader, evaluation.

Runs linear scalarisation for ``--epochs`` epochs with the runner itself (``bayesagg run``: the
same loaders, steps and evaluation as every method) into a temporary folder, and prints the
per-epoch split the runner logs in epochs.csv: ``train_seconds`` (the whole training pass),
of which ``data_seconds`` (waiting for the loader and moving the batch) and the steps, and
``eval_seconds`` (validation + test). The last epoch is reported (the first may build caches).
UTKFace is run twice, decoding the JPEGs at every epoch (``cache=False``, the old default) and
from the decoded uint8 cache (today's default).

    python scripts/timing/epoch_time.py --data-dir ../shared/data [--benchmarks multimnist,qm9]
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from bayesagg.benchmarks.paths import MissingDataError
from bayesagg.runner import RunConfig, run

BENCHMARKS = ("multimnist", "fashion-mtl", "utkface", "qm9")
VARIANTS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "utkface": (("JPEG decoding (cache=False)", {"cache": False}), ("decoded cache", {})),
}


def epoch_split(benchmark: str, data_options: dict[str, Any], args: argparse.Namespace) -> dict:
    """Return the last epoch's row of epochs.csv and the run's wall time."""
    with tempfile.TemporaryDirectory() as out:
        config = RunConfig(
            benchmark=benchmark,
            method="ls",
            protocol="quick",
            epochs=args.epochs,
            data_options=data_options,
            data_dir=args.data_dir,
            out=out,
        )
        began = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            run(config, progress=False)
        wall = time.perf_counter() - began
        with open(next(Path(out).rglob("epochs.csv"))) as f:
            rows = list(csv.DictReader(f))
    row = {k: float(v) for k, v in rows[-1].items() if k.endswith(("seconds", "ms_median"))}
    row["wall_seconds"] = wall
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--benchmarks", default=",".join(BENCHMARKS))
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run (last reported)")
    parser.add_argument("--data-dir")
    args = parser.parse_args(argv)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load}; "
        f"LS, protocol quick, epoch {args.epochs} of {args.epochs}"
    )
    print(
        "| benchmark | loader | epoch: training (s) | of which loader (s) | steps (s) "
        "| median step (ms) | evaluation (s) | evaluation / training |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for benchmark in args.benchmarks.split(","):
        for label, options in VARIANTS.get(benchmark, (("default", {}),)):
            try:
                row = epoch_split(benchmark, options, args)
            except (MissingDataError, ImportError) as err:
                print(f"| {benchmark} | skipped: {err} | | | | | | |")
                continue
            train, data, evaluation = (
                row[k] for k in ("train_seconds", "data_seconds", "eval_seconds")
            )
            print(
                f"| {benchmark} | {label} | {train:.2f} | {data:.2f} ({100 * data / train:.0f} %) "
                f"| {train - data:.2f} | {row['step_ms_median']:.1f} | {evaluation:.2f} "
                f"| {evaluation / train:.2f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
