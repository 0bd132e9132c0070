"""Print an ablation table: BayesAgg-MTL variants vs LS, mean +- std over seeds.

    python scripts/tables/ablation_table.py results/ablation/multimnist/quick results/multimnist/quick --seeds 0,1,2

The folders given are merged into one table. For every method folder under them (``ls``,
``bayesagg``, ``bayesagg_<hp>``...; ``stl`` is skipped) it reads ``seed<N>/result.json`` and prints the validation criterion (what the choice is made
on), the test criterion metrics (``--tasks``: those tasks' test metrics; many regression tasks: none) and test Delta_m, as mean +- std over the seeds that exist, with
how many there are. Validation decides; test is reported, never used to choose. Accuracies in %.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from bayesagg.runner.results import RESULT_FILE, read_result


def _fmt(values: list[float], scale: float = 1.0) -> str:
    if not values:
        return "-"
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.3g} ± {std:.2g}" if abs(mean) < 1 else f"{mean:.2f} ± {std:.2f}"


def table(folders: list[Path], seeds: list[int], tasks_shown: list[str] | None = None) -> str:
    rows = []
    method_dirs = sorted(
        (p for folder in folders for p in folder.iterdir() if p.is_dir()), key=lambda p: p.name
    )
    for method_dir in method_dirs:
        if method_dir.name == "stl":
            continue
        docs = []
        for seed in seeds:
            path = method_dir / f"seed{seed}" / RESULT_FILE
            if path.is_file():
                docs.append(read_result(path))
        if not docs:
            continue
        criterion = docs[0]["selection"]["criterion"]
        val = [d["selection"]["value"] for d in docs]
        test_keys = [k for k in docs[0]["test"] if k.endswith(("accuracy", "mae", "mse"))]
        if tasks_shown is not None:  # the tasks asked for, by name
            tests = {
                k: [d["test"][k] for d in docs] for k in test_keys if k.split("/")[0] in tasks_shown
            }
        elif len(test_keys) > 4 and not all(k.endswith("accuracy") for k in test_keys):
            tests = {}  # many regression tasks (QM9): a mean of MAEs in mixed units means nothing
        elif len(test_keys) > 4:  # many tasks (Fashion-MTL): the k-way accuracy and the task mean
            tasks = [k for k in test_keys if not k.startswith("argmax/")]
            tests = {
                "mean task accuracy": [statistics.fmean(d["test"][k] for k in tasks) for d in docs]
            }
            if "argmax/accuracy" in docs[0]["test"]:
                tests["argmax/accuracy"] = [d["test"]["argmax/accuracy"] for d in docs]
        else:
            tests = {k: [d["test"][k] for d in docs] for k in test_keys}
        dm = [d["delta_m"]["test"] for d in docs if d.get("delta_m")]
        rows.append((method_dir.name, criterion, val, tests, dm, len(docs)))
    if not rows:
        return f"{', '.join(map(str, folders))}: no results\n"
    keys = list(rows[0][3])
    pct = 100.0 if "accuracy" in rows[0][1] else 1.0
    head = ["method", f"val {rows[0][1]}", *[f"test {k}" for k in keys], "test Δm %", "seeds"]
    lines = [
        f"### {' + '.join(map(str, folders))}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for name, _, val, tests, dm, n in rows:
        cells = [
            name,
            _fmt(val, pct),
            *[_fmt(tests[k], 100.0 if "accuracy" in k else 1.0) for k in keys],
            _fmt(dm),
            str(n),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--tasks", default=None, help="comma-separated tasks whose test metric to show"
    )
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(table(args.folders, seeds, None if args.tasks is None else args.tasks.split(",")))


if __name__ == "__main__":
    main()
