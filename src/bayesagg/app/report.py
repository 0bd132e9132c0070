"""Paper-style tables (markdown) and plots (PNG) from the runs' result JSON files.

One table per benchmark and protocol: the test metric of every task (mean +- std over seeds),
Delta_m against ONE set of STL references (published or this project's own, never mixed, named
under the table), mean rank, median time per training step, and the seeds. Plots: each method's
task weights per epoch (BayesAgg-MTL's are the paper's Figure 3 averaged per epoch) and the
validation criterion per epoch.
"""

from __future__ import annotations

import math
import os
import re
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bayesagg.benchmarks import registry
from bayesagg.benchmarks.registry import Benchmark, References
from bayesagg.metrics import delta_m, higher_is_better, mean_rank
from bayesagg.runner.config import ConfigError
from bayesagg.runner.references import OWN_FILE, coverage, load_references, resolve_references
from bayesagg.runner.results import find_results
from bayesagg.runner.sweep import sweeps_report

__all__ = [
    "delta_against",
    "protocol_report",
    "run_summary",
    "table_references",
    "write_report",
]

_CALIBRATION = ("ece", "brier")

#: Said wherever a smoke-protocol run's numbers are shown: a few batches of a tiny subset, whose
#: metrics (QM9's Delta_m reaches thousands of per cent) say nothing about a method.
SMOKE_NOTE = (
    "smoke protocol: a pipeline check on a tiny subset and budget; its metrics and Δm say "
    "nothing about the method (use --protocol quick or paper for numbers that do)"
)


def _fmt(values: Sequence[float], digits: int = 4) -> str:
    """Return ``mean +- std`` (std over seeds, only with two or more) with ``digits`` figures."""
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    mean = statistics.fmean(values)
    text = f"{mean:.{digits}g}"
    # A diverged seed's NaN or inf makes the mean so; a spread of it means nothing.
    if len(values) > 1 and all(math.isfinite(v) for v in values):
        text += f" ± {statistics.stdev(values):.2g}"
    return text


def _load(
    root: str | os.PathLike[str], unreadable: list[tuple[Path, str]] | None = None
) -> list[dict[str, Any]]:
    return [data for _, data in find_results(root, unreadable)]


def _unreadable_note(unreadable: Sequence[tuple[Path, str]]) -> str:
    """Return the lines naming result files that could not be read (their runs unfinished)."""
    if not unreadable:
        return ""
    n = len(unreadable)
    lines = [
        "",
        f"{n} result file{'s' if n > 1 else ''} left out above (unreadable, or not a run's "
        "result) and treated as unfinished (run the same command again to redo them):",
        "",
    ]
    lines += [f"- `{path}`: {reason}" for path, reason in unreadable]
    return "\n".join(lines) + "\n"


def table_references(spec: Benchmark, choice: str, folder: Path) -> References | None:
    """Return the STL references of a protocol folder's table (``--references`` ``choice``).

    A campaign still running has partial STL references: the table then says what is missing.
    """
    # A campaign still running has partial STL references: the table then says what is missing.
    return resolve_references(spec, choice, folder / OWN_FILE, partial=True)


def _method_rows(
    runs: Iterable[dict[str, Any]], order: Sequence[str] | None
) -> dict[str, list[dict[str, Any]]]:
    rows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r.get("stl_task") is None:
            rows[r["method_label"]].append(r)
    if order:
        rank = {m: i for i, m in enumerate(order)}
        return dict(
            sorted(rows.items(), key=lambda kv: (rank.get(kv[1][0]["method"], len(rank)), kv[0]))
        )
    return dict(sorted(rows.items()))


def _stl_row(runs: Iterable[dict[str, Any]]) -> dict[str, list[float]]:
    """Return the STL models' test values per metric key, one value per seed."""
    out: dict[str, list[float]] = defaultdict(list)
    for r in runs:
        key = r.get("stl_metric")
        if key and r["test"].get(key) is not None:
            out[key].append(r["test"][key])
    return out


def protocol_report(
    folder: str | os.PathLike[str],
    *,
    references: str = "auto",
    methods: Sequence[str] | None = None,
    plots: bool = False,
) -> str:
    """Return the markdown table of every run in ``<out>/<benchmark>/<protocol>``."""
    folder = Path(folder)
    unreadable: list[tuple[Path, str]] = []
    runs = _load(folder, unreadable)
    if not runs:
        return f"no finished runs under {folder}" + _unreadable_note(unreadable)
    return _table(folder, runs, references, methods, plots) + _unreadable_note(unreadable)


def _table(
    folder: Path,
    runs: list[dict[str, Any]],
    references: str,
    order: Sequence[str] | None,
    plots: bool,
) -> str:
    first = runs[0]
    spec = registry.get(first["benchmark"])
    keys = list(first["task_metrics"])
    refs = table_references(spec, references, folder)
    rows = _method_rows(runs, order)
    stl = _stl_row(runs)
    extras = sorted({k for r in runs for k in r["test"] if k.startswith("argmax/")})
    columns = keys + extras

    lines = [f"## {spec.name}: protocol {first['protocol_dir']}", ""]
    if first.get("caveat"):
        lines += [f"**{first['caveat']}.**", ""]
    if first.get("protocol") == "smoke":
        lines += [f"**{SMOKE_NOTE[0].upper() + SMOKE_NOTE[1:]}.**", ""]
    lines += [_recipe(first), ""]
    arrows = ["↑" if higher_is_better(k) else "↓" for k in columns]
    header = [f"{k} {a}" for k, a in zip(columns, arrows, strict=True)]
    header += ["Δm % ↓", "MR ↓", "ms/step", "seeds", "epoch"]
    lines += ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]

    means: dict[str, dict[str, float | None]] = {}
    for label, rs in rows.items():
        means[label] = {
            k: statistics.fmean(v)
            if (v := [r["test"][k] for r in rs if r["test"].get(k) is not None])
            else None
            for k in keys
        }
    ranks = mean_rank(means, keys) if len(means) > 1 else {m: 1.0 for m in means}
    for label, rs in rows.items():
        cells = [_fmt([r["test"].get(k) for r in rs]) for k in columns]
        deltas = [delta_against(r["test"], refs) for r in rs] if refs is not None else []
        # A seed whose metric is undefined (e.g. AUC on a one-class split) has no Delta_m.
        cells.append(_fmt(deltas, 3) if deltas and None not in deltas else "-")
        cells.append(f"{ranks[label]:.2f}" if label in ranks else "-")
        cells.append(_fmt([r["time_per_step"]["median_ms"] for r in rs], 3))
        cells.append(",".join(str(r["seed"]) for r in sorted(rs, key=lambda r: r["seed"])))
        cells.append(_fmt([r["selection"]["epoch"] for r in rs], 3))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    if stl:
        cells = [_fmt(stl.get(k, [])) for k in columns]
        own = refs is not None and refs.kind == "own-stl"
        cells += ["0 (reference)" if own else "-", "-", "-", "-", "-"]
        lines.append("| STL (this project) | " + " | ".join(cells) + " |")
    lines.append("")
    if refs is None:
        lines.append(_no_references_note(spec, references, folder))
    else:
        lines.append(f"Δm against {refs.kind} STL references: {refs.source}.")
        if refs.kind == "published" and first["protocol"] not in ("paper", "revised"):
            lines.append(
                "These references come from full-data, full-budget training; models trained "
                "on this protocol's subset and budget are far from them, so compare the "
                "methods with each other, not with the references."
            )
    # An STL model selects on its own task; the table's multi-task runs on the protocol's rule.
    selected = next((r for r in runs if r.get("stl_task") is None), first)
    lines.append(
        "Metric values are test values at the epoch with the best validation "
        f"{selected['selection']['criterion']} (mean ± std over seeds). MR: mean rank over the "
        "task metrics among the methods of this table (STL excluded). ms/step: median time of a "
        "whole training step (forward, method backward, optimiser step) on "
        f"{first.get('device', 'cpu')}, warm-up epochs of BayesAgg-MTL excluded."
    )
    parallel = sorted({int(r.get("world_size") or 1) for r in runs} - {1})
    if parallel:
        lines.append(
            f"Some runs trained on {' or '.join(map(str, parallel))} data-parallel processes "
            "(--nproc), each on its share of every batch."
        )
    calibration = sorted(
        {k for r in runs for k in r["test"] if k.rpartition("/")[2] in _CALIBRATION}
    )
    if calibration:
        lines += ["", "Calibration (test, lower is better):", ""]
        lines += [
            "| method | " + " | ".join(calibration) + " |",
            "|---" * (len(calibration) + 1) + "|",
        ]
        for label, rs in rows.items():
            lines.append(
                f"| {label} | "
                + " | ".join(_fmt([r["test"].get(k) for r in rs]) for k in calibration)
                + " |"
            )
    commands = collapse_commands(r.get("command", "") for r in runs)
    braces = any("{" in c for c in commands)
    lines += ["", "Produced by" + (" (`{a,b}`: one command per value)" if braces else "") + ":", ""]
    lines += [f"    {c}" for c in commands[:20]]
    if len(commands) > 20:
        lines.append(f"    ... and {len(commands) - 20} more")
    if plots:
        lines += ["", *_plots(folder, rows)]
    return "\n".join(lines) + "\n"


#: Options whose values vary between the runs of one campaign; their values are collapsed.
#: ``--seeds`` stays: merging seed lists would claim seeds that some methods never ran.
_VARYING = ("--method", "-m", "--methods", "--seed", "--task")
_LISTS = ("--methods",)


def collapse_commands(commands: Iterable[str]) -> list[str]:
    """Return the distinct commands, those differing only in method, seed or task as one line.

    ``run ... --method stl --task mu --seed 0`` and ``... --task alpha --seed 1`` become
    ``run ... --method stl --task {mu,alpha} --seed {0,1}`` (values in order of first use), so
    that a campaign of many ``run`` calls reads as the few commands a user would type;
    ``compare`` calls over the same ``--seeds`` with different ``--methods`` become one
    ``compare`` with the union of the method lists.
    """
    groups: dict[tuple[str, ...], list[list[str]]] = {}
    for command in commands:
        words = command.split()
        template = tuple("{}" if i and words[i - 1] in _VARYING else w for i, w in enumerate(words))
        slots = [w for i, w in enumerate(words) if i and words[i - 1] in _VARYING]
        groups.setdefault(template, []).append(slots)
    out = []
    for template, uses in groups.items():
        options = [template[i - 1] for i, w in enumerate(template) if w == "{}"]
        filled = []
        for j, option in enumerate(options):
            if option in _LISTS:  # compare's lists: the union, as one compare would take it
                items = [x for use in uses for x in use[j].split(",")]
                filled.append(",".join(dict.fromkeys(items)))
            else:
                values = list(dict.fromkeys(use[j] for use in uses))
                filled.append(values[0] if len(values) == 1 else "{" + ",".join(values) + "}")
        slots = iter(filled)
        out.append(" ".join(next(slots) if w == "{}" else w for w in template))
    return sorted(out)


def _no_references_note(spec: Any, references: str, folder: Path) -> str:
    """Say why the table has no Delta_m: partial STL runs, none at all, or not asked for."""
    if references == "none":
        return "Δm: not computed (--references none)."
    path = folder / OWN_FILE if references in ("auto", "own") else Path(references)
    if path.is_file():
        gaps = coverage(spec, load_references(path))
        if gaps is not None:
            return f"Δm: not yet: the STL references in {path.name} cover {gaps}."
    where = "none published for this benchmark; " if spec.published_references() is None else ""
    return (
        f"Δm: no STL references ({where}run `bayesagg run --method stl` with the same protocol "
        "to make this project's own)."
    )


def _recipe(run: Mapping[str, Any]) -> str:
    """Return one sentence with the effective recipe of a run, naming any overrides."""
    p = run.get("protocol_settings", {})
    limit = p.get("train_limit")
    text = (
        f"Recipe: {p.get('epochs')} epochs, batch {p.get('batch_size')}, Adam lr {p.get('lr')} "
        f"(weight decay {p.get('weight_decay')}), scheduler {p.get('scheduler')}, "
        + (f"at most {limit} training examples" if limit else "all training examples")
        + "."
    )
    protocol, _, overrides = run["protocol_dir"].partition("+")
    if overrides:
        return text + f" The {protocol} protocol with overrides {overrides}."
    return text + f" Protocol {protocol}: {run.get('protocol_note') or protocol}."


def delta_against(metrics: Mapping[str, Any], refs: References | None) -> float | None:
    """Return Delta_m against ``refs``; None without references or a metric to compare."""
    if refs is None:
        return None
    try:
        return delta_m(metrics, refs.values)
    except KeyError:
        return None


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_")


def _plots(folder: Path, rows: Mapping[str, list[dict[str, Any]]]) -> list[str]:
    """Write the weight and validation plots of one table; return markdown image lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out: list[str] = []
    for label, rs in rows.items():
        r = min(rs, key=lambda r: r["seed"])
        weights = r.get("weights_per_epoch") or []
        epochs = [i + 1 for i, w in enumerate(weights) if w is not None]
        if not epochs:
            continue
        fig, ax = plt.subplots(figsize=(6, 3.5))
        for k, task in enumerate(r["tasks"]):
            ax.plot(epochs, [weights[e - 1][k] for e in epochs], marker=".", label=task)
        ax.set_xlabel("epoch")
        ax.set_ylabel("task weight (epoch mean)")
        ax.set_title(f"{r['benchmark']} {label}, seed {r['seed']}")
        if len(r["tasks"]) <= 12:
            ax.legend(fontsize=6, ncol=2)
        name = f"weights-{_slug(label)}.png"
        fig.tight_layout()
        fig.savefig(folder / name, dpi=120)
        plt.close(fig)
        out.append(f"![{label} task weights per epoch]({name})")
    fig, ax = plt.subplots(figsize=(6, 3.5))
    criterion = None
    for label, rs in rows.items():
        r = min(rs, key=lambda r: r["seed"])
        values = [(h["epoch"], h["val_criterion"]) for h in r["history"]]
        values = [(e, v) for e, v in values if v is not None and math.isfinite(v)]
        if values:
            ax.plot(*zip(*values, strict=True), marker=".", label=label)
            criterion = r["selection"]["criterion"]
    if criterion is not None:
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {criterion}")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(folder / "validation.png", dpi=120)
        out.append(f"![validation {criterion} per epoch](validation.png)")
    plt.close(fig)
    return out


def write_report(
    root: str | os.PathLike[str],
    *,
    references: str = "auto",
    output: str | os.PathLike[str] | None = None,
    unreadable: list[tuple[Path, str]] | None = None,
) -> Path:
    """Write ``report.md`` (and PNG plots next to each protocol's runs) for all runs under root.

    Result files left out (unreadable, or not a run's result) are named in the report and, when
    ``unreadable`` is given, appended to it as (path, reason) so that a caller can warn too.
    Raises ConfigError if ``root`` holds no finished run.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"results folder {root} does not exist (the --out of run/compare)")
    groups: dict[Path, list[dict[str, Any]]] = defaultdict(list)

    unreadable = [] if unreadable is None else unreadable
    for path, data in find_results(root, unreadable):
        folder = _protocol_folder(path, data)
        groups[folder].append(data)
    if not groups:
        raise ConfigError(
            f"no finished runs (result.json) under {root}"
            + "".join(f"; unreadable: {p} ({why})" for p, why in unreadable)
        )
    parts = ["# Results", ""]
    for folder in sorted(groups):
        text = _table(folder, groups[folder], references, None, plots=True)
        # Images are written next to the runs; link them relative to the report.
        rel = os.path.relpath(folder, Path(output).parent if output else root)
        text = text.replace("](weights-", f"]({rel}/weights-").replace(
            "](validation.png", f"]({rel}/validation.png"
        )
        parts.append(text)

    parts.append(sweeps_report(root))
    parts.append(_unreadable_note(unreadable))
    path = Path(output) if output else root / "report.md"
    path.write_text("\n".join(parts))
    return path


def _protocol_folder(path: Path, data: Mapping[str, Any]) -> Path:
    """Return ``<out>/<benchmark>/<protocol>`` of a result file."""
    for parent in path.parents:
        if parent.name == data["protocol_dir"] and parent.parent.name == data["benchmark"]:
            return parent
    return path.parent


def run_summary(results: Sequence[Mapping[str, Any]]) -> str:
    """Return a few lines per run: selected epoch, test metrics, Delta_m, time per step."""
    lines = []
    for r in results:
        head = f"{r['benchmark']} {r['method_label']} seed {r['seed']} ({r['protocol_dir']})"
        if r.get("stl_task"):
            head += f", STL model of {r['stl_task']}"
        lines.append(head)
        sel = r["selection"]
        value = sel["value"]
        lines.append(
            f"  selected epoch {sel['epoch']}/{r['epochs']} on validation {sel['criterion']}"
            + ("" if value is None else f" = {value:.4g}")
        )
        keys = [r["stl_metric"]] if r.get("stl_metric") else r["task_metrics"]
        keys = keys + [k for k in r["test"] if k.startswith("argmax/")]
        shown = ", ".join(
            f"{k} {r['test'][k]:.4g}" if r["test"].get(k) is not None else f"{k} -" for k in keys
        )
        lines.append(f"  test: {shown}")
        if r.get("delta_m") and r["delta_m"].get("test") is not None:
            refs = r["delta_m"]["references"]
            lines.append(
                f"  Δm {r['delta_m']['test']:.2f} % vs {refs['kind']} STL ({refs['source']})"
            )
        ms = r["time_per_step"]["median_ms"]
        if ms is not None:
            lines.append(
                f"  time per step: {ms:.2f} ms (median of {r['time_per_step']['steps_timed']})"
            )
        world = int(r.get("world_size") or 1)
        if world > 1:
            lines.append(
                f"  processes: {world} data-parallel ({r.get('backend')}), each on 1/{world} "
                "of every batch"
            )
        if r.get("protocol") == "smoke":
            lines.append(f"  note: {SMOKE_NOTE}")
    return "\n".join(lines)
