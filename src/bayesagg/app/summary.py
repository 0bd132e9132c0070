"""The comparison campaign across benchmarks: paired differences to LS, ranks, cost (RESULTS.md).

``bayesagg summary results/multimnist/quick results/fashion-mtl/quick ... --output RESULTS.md``
writes, for each protocol folder (the ``--out`` of ``bayesagg compare`` plus the benchmark and
protocol), the per-task table of :func:`bayesagg.app.report.protocol_report` and a second table:
each method's Delta_m (against the folder's STL references, as the report computes it), its
paired difference to linear scalarisation over the seeds both have, with a 95 % Student-t
interval (n - 1 degrees of freedom), and its rank by mean Delta_m. Across the folders: each
method's mean rank over the benchmarks where it ran, and the campaign's cost (the wall time of
every finished run, STL included). Paired differences remove the seed's shared part (same
data order and initialisation for every method of a seed), which is why they are much tighter
than the spread of either method alone.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bayesagg.app.report import delta_against, protocol_report, table_references
from bayesagg.benchmarks import registry
from bayesagg.runner.config import ConfigError
from bayesagg.runner.results import find_results

__all__ = ["BenchmarkSummary", "paired_interval", "summarise", "write_summary"]

#: The baseline of the paired differences.
BASELINE = "ls"


@dataclass
class BenchmarkSummary:
    """One protocol folder: Delta_m per method and seed, time per step, wall time of all runs."""

    folder: Path
    benchmark: str
    #: The protocol folder's name: the protocol plus its overrides, if any.
    protocol: str
    references: str = "own"
    delta: dict[str, dict[int, float]] = field(default_factory=dict)
    ms_per_step: dict[str, list[float]] = field(default_factory=dict)
    wall_seconds: float = 0.0
    runs: int = 0
    #: Result files left out (path, reason): unreadable, or not a run's result.
    left_out: list[tuple[Path, str]] = field(default_factory=list)
    #: Runs left out of the means and ranks because their Delta_m is not finite (diverged).
    non_finite: list[tuple[Path, str]] = field(default_factory=list)

    def mean_delta(self) -> dict[str, float]:
        return {m: statistics.fmean(v.values()) for m, v in self.delta.items() if v}

    def ranks(self) -> dict[str, float]:
        """Return each method's rank by mean Delta_m (1 = lowest; ties share the mean rank)."""
        means = self.mean_delta()
        ordered = sorted(means.values())
        return {
            m: statistics.fmean(i + 1 for i, x in enumerate(ordered) if x == v)
            for m, v in means.items()
        }


def paired_interval(
    values: Mapping[int, float], baseline: Mapping[int, float], level: float = 0.95
) -> tuple[float, float, float, int] | None:
    """Return (mean, low, high, n) of ``values - baseline`` over their common seeds.

    The interval is the Student-t one (n - 1 degrees of freedom, scipy); None below 2 seeds.
    """
    from scipy import stats

    seeds = sorted(set(values) & set(baseline))
    if len(seeds) < 2:
        return None
    diffs = [values[s] - baseline[s] for s in seeds]
    mean = statistics.fmean(diffs)
    half = (
        stats.t.ppf(0.5 + level / 2, len(diffs) - 1)
        * statistics.stdev(diffs)
        / math.sqrt(len(diffs))
    )
    return mean, mean - half, mean + half, len(diffs)


def summarise(
    folder: str | os.PathLike[str],
    references: str = "own",
    seeds: Sequence[int] | None = None,
) -> BenchmarkSummary:
    """Read every finished run of one protocol folder.

    Delta_m is against ``references`` (as for ``bayesagg report``): by default this project's
    STL runs in the folder, not the published values a benchmark may have, so that every
    method is measured against models trained on the same subset and budget. With ``seeds``,
    the multi-task runs of other seeds are left out (so that every method's mean is over the
    same seeds); the wall time still counts every finished run. Unreadable or foreign result
    files, and runs whose Delta_m is not finite, are left out of the means and ranks and
    listed in ``left_out`` and ``non_finite``: one diverged run must not make a table NaN.

    Raises ConfigError when the folder holds no finished run.
    """
    folder = Path(folder)
    left_out: list[tuple[Path, str]] = []
    found = list(find_results(folder, left_out))
    runs = [data for _, data in found]
    if not runs:
        raise ConfigError(
            f"no finished runs (result.json) under {folder}"
            + "".join(f"; unreadable: {p} ({why})" for p, why in left_out)
        )
    spec = registry.get(runs[0]["benchmark"])
    refs = table_references(spec, references, folder)
    # The protocol folder's name (the protocol and its overrides, e.g. quick+data.label_fraction=0.3)
    # names the section: two folders of one benchmark must not share a heading, plot or column.
    protocol = runs[0].get("protocol_dir") or runs[0]["protocol"]
    out = BenchmarkSummary(folder, spec.name, protocol, references, left_out=left_out)
    for path, r in found:
        out.runs += 1
        out.wall_seconds += float(r.get("wall_seconds") or 0.0)
        if r.get("stl_task") is not None or (seeds is not None and r["seed"] not in seeds):
            continue
        label = r["method_label"]
        value = delta_against(r["test"], refs)
        if value is not None and not math.isfinite(value):
            out.non_finite.append((path, f"{label} seed {r['seed']}: Delta_m is {value}"))
        elif value is not None:
            out.delta.setdefault(label, {})[int(r["seed"])] = value
        ms = (r.get("time_per_step") or {}).get("median_ms")
        if ms is not None:
            out.ms_per_step.setdefault(label, []).append(float(ms))
    return out


def _benchmark_section(s: BenchmarkSummary, plots: Path | None) -> list[str]:
    lines = [f"## {s.benchmark}, protocol `{s.protocol}`", ""]
    report = protocol_report(s.folder, references=s.references)
    lines += [report.split("\n", 2)[2].strip(), ""]  # without its own title
    if s.non_finite:
        lines += [
            f"{len(s.non_finite)} run{'s' if len(s.non_finite) > 1 else ''} left out of the "
            "paired differences and ranks below (Delta_m not finite: diverged?):",
            "",
            *(f"- `{path}`: {why}" for path, why in s.non_finite),
            "",
        ]
    if not s.delta:
        lines += [
            f"No paired differences or ranks: no multi-task run has a Delta_m against the "
            f"STL references chosen (`--references {s.references}`).",
            "",
        ]
        return lines
    base = s.delta.get(BASELINE, {})
    ranks = s.ranks()
    means = s.mean_delta()
    used = sorted({seed for v in s.delta.values() for seed in v})
    lines += [
        f"Paired differences to LS over the seeds both ran (Delta_m in points; negative = "
        f"better than LS), 95 % Student-t intervals; rank by mean Delta_m among "
        f"{len(means)} methods; multi-task runs of seeds {', '.join(map(str, used))} (the "
        f"table above may average more seeds for some methods):",
        "",
        "| method | Delta_m % | minus LS: mean [95 % CI] | seeds | verdict | rank |",
        "|---|---|---|---|---|---|",
    ]
    intervals: dict[str, tuple[float, float, float, int]] = {}
    for method in sorted(means, key=means.__getitem__):
        values = s.delta[method]
        spread = f" ± {statistics.stdev(values.values()):.2f}" if len(values) > 1 else ""
        if method == BASELINE:
            cell, verdict, n = "(baseline)", "-", len(values)
        else:
            interval = paired_interval(values, base)
            if interval is None:
                cell, verdict, n = "n/a (< 2 common seeds)", "-", len(set(values) & set(base))
            else:
                intervals[method] = interval
                mean, low, high, n = interval
                cell = f"{mean:+.2f} [{low:+.2f}, {high:+.2f}]"
                verdict = "better" if high < 0 else "worse" if low > 0 else "not resolved"
        lines.append(
            f"| {method} | {means[method]:.2f}{spread} | {cell} | {n} | {verdict} "
            f"| {ranks[method]:g} |"
        )
    for name in ("bayesagg", "bayesagg-paper"):
        if name in ranks:
            lines += ["", f"`{name}` ranks {ranks[name]:g} of {len(ranks)} by mean Delta_m."]
    if plots is not None and intervals:
        lines += ["", _plot_intervals(s, intervals, plots)]
    lines.append("")
    return lines


def _plot_intervals(
    s: BenchmarkSummary, intervals: Mapping[str, tuple[float, float, float, int]], plots: Path
) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = sorted(intervals, key=lambda m: intervals[m][0])
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(order) + 1.2))
    for y, m in enumerate(order):
        mean, low, high, _ = intervals[m]
        colour = "tab:green" if high < 0 else "tab:red" if low > 0 else "tab:gray"
        ax.errorbar(mean, y, xerr=[[mean - low], [high - mean]], fmt="o", color=colour, capsize=3)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(order)), order, fontsize=8)
    ax.set_xlabel("Delta_m minus LS's, same seed (points; < 0 is better)")
    ax.set_title(f"{s.benchmark} {s.protocol}: paired difference to LS, 95 % CI", fontsize=9)
    fig.tight_layout()
    plots.mkdir(parents=True, exist_ok=True)
    name = f"paired-{s.benchmark}-{s.protocol}.png"
    fig.savefig(plots / name, dpi=120)
    plt.close(fig)
    return f"![{s.benchmark} paired differences to LS](results/plots/{name})"


def write_summary(
    folders: Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    plots: bool = True,
    preamble: str = "",
    references: str = "own",
    seeds: Sequence[int] | None = None,
    left_out: list[tuple[Path, str]] | None = None,
) -> str:
    """Write the campaign summary of ``folders`` to ``output``; return its text.

    Every result file or run left out (unreadable, not a run's result, Delta_m not finite) is
    named in the text and, when ``left_out`` is given, appended to it as (path, reason) so that
    the command line can warn as well.
    """
    output = Path(output)
    plot_dir = output.parent / "results" / "plots" if plots else None
    summaries = [summarise(f, references, seeds) for f in folders]
    if left_out is not None:
        for s in summaries:
            left_out += s.left_out + s.non_finite
    lines = ["# Results", ""]
    if preamble:
        lines += [preamble.strip(), ""]
    for s in summaries:
        lines += _benchmark_section(s, plot_dir)
    lines += ["## Across benchmarks", ""]
    # A column per folder: the benchmark's name, with the protocol where one benchmark has
    # several folders (e.g. quick and quick+data.label_fraction=0.3).
    count = Counter(s.benchmark for s in summaries)
    names = [
        s.benchmark if count[s.benchmark] == 1 else f"{s.benchmark} {s.protocol}" for s in summaries
    ]
    if len(set(names)) < len(names):
        raise ConfigError(f"two folders hold the same benchmark and protocol: {names}")
    ranks: dict[str, dict[str, float]] = defaultdict(dict)
    for s, name in zip(summaries, names, strict=True):
        for m, r in s.ranks().items():
            ranks[m][name] = r
    lines += [
        "Rank by mean Delta_m on each benchmark (1 = best among the methods run there) and the "
        "mean of those ranks over the benchmarks where the method ran:",
        "",
        "| method | " + " | ".join(names) + " | mean rank | benchmarks |",
        "|---|" + "---|" * len(names) + "---|---|",
    ]
    mean_rank = {m: statistics.fmean(v.values()) for m, v in ranks.items()}
    for m in sorted(mean_rank, key=lambda m: (-len(ranks[m]), mean_rank[m])):
        cells = " | ".join(f"{ranks[m][b]:g}" if b in ranks[m] else "-" for b in names)
        lines.append(f"| {m} | {cells} | {mean_rank[m]:.2f} | {len(ranks[m])} |")
    total = sum(s.wall_seconds for s in summaries)
    lines += [
        "",
        "## What the campaign cost",
        "",
        "| benchmark | finished runs (STL models included) | wall time (h) |",
        "|---|---|---|",
    ]
    lines += [
        f"| {name} | {s.runs} | {s.wall_seconds / 3600:.2f} |"
        for s, name in zip(summaries, names, strict=True)
    ]
    lines += [
        f"| all | {sum(s.runs for s in summaries)} | {total / 3600:.2f} |",
        "",
        "Wall time of each run as its result.json records it (one CPU thread per run, two runs "
        "at a time on the 2-core machine).",
        "",
    ]
    text = "\n".join(lines)
    output.write_text(text)
    return text
