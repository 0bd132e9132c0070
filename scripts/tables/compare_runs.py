"""Are two runs the same run? Compare their results field by field, timings left out.

    python scripts/tables/compare_runs.py RUN_A RUN_B [RUN_A2 RUN_B2 ...]

Each RUN is a run folder (``<out>/<benchmark>/<protocol>/<method>/seed<S>``). Two runs are
*identical* when their selection, validation and test metrics, Delta_m, per-epoch history,
task weights, hyper-parameters, protocol settings and note are equal and their ``epochs.csv``
rows are equal, leaving out what measures time (``*_seconds``, ``step_ms_*``, ``time_per_step``,
the start time, the command). Used to check that a refactor changed no number: run the same
command with the old and the new code and compare (results/reproduction/README.md). Exit code
1 when a pair differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bayesagg.runner.results import read_epochs, read_result

#: Result fields that must agree (everything a table or plot reads).
FIELDS = (
    "selection",
    "val",
    "test",
    "delta_m",
    "history",
    "weights_per_epoch",
    "hparams",
    "protocol_settings",
    "protocol_note",
)


def _timeless(value: Any) -> Any:
    """``value`` without the keys that measure time (recursively)."""
    if isinstance(value, dict):
        return {
            k: _timeless(v)
            for k, v in value.items()
            if not (k.endswith("_seconds") or k.startswith("step_ms"))
        }
    if isinstance(value, list):
        return [_timeless(v) for v in value]
    return value


def differences(run_a: Path, run_b: Path) -> list[str]:
    """The names of the fields (and ``epochs.csv``) in which the two runs differ."""
    a, b = read_result(run_a / "result.json"), read_result(run_b / "result.json")
    found = [f for f in FIELDS if _timeless(a.get(f)) != _timeless(b.get(f))]
    if _timeless(read_epochs(run_a)) != _timeless(read_epochs(run_b)):
        found.append("epochs.csv")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run folders, in pairs")
    args = parser.parse_args()
    if len(args.runs) % 2:
        parser.error("give the run folders in pairs")
    differ = False
    for run_a, run_b in zip(args.runs[::2], args.runs[1::2], strict=True):
        found = differences(run_a, run_b)
        differ = differ or bool(found)
        verdict = "identical" if not found else "differ in " + ", ".join(found)
        print(f"{run_a} vs {run_b}: {verdict}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
