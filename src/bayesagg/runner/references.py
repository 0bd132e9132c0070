"""STL references for Delta_m, with their provenance: published, or this project's STL runs.

A table never mixes the two: a run records the one set it used, and ``report`` recomputes every
Delta_m of a table against one set.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

from bayesagg.benchmarks.registry import Benchmark, References
from bayesagg.runner.config import ConfigError
from bayesagg.runner.results import find_results, read_json, write_json_atomic

__all__ = [
    "OWN_FILE",
    "coverage",
    "load_references",
    "resolve_references",
    "write_own_references",
]

OWN_FILE = "references.json"
SCHEMA = "bayesagg.references/1"


def own_path(out: str | os.PathLike[str], benchmark: str, protocol_dir: str) -> Path:
    return Path(out) / benchmark / protocol_dir / OWN_FILE


def load_references(path: str | os.PathLike[str]) -> References:
    """Return the references stored in a references JSON (ConfigError if unreadable)."""
    try:
        data = read_json(path)
        refs = References(values=dict(data["values"]), kind=data["kind"], source=data["source"])
    except FileNotFoundError:
        raise ConfigError(
            f"references file {path} not found: run `bayesagg run --method stl` first "
            "or pass --references published"
        ) from None
    except (KeyError, ValueError, TypeError) as err:
        raise ConfigError(f"references file {path} is not a references JSON ({err})") from None
    _check_values(refs, path)
    return refs


def _check_values(refs: References, path: str | os.PathLike[str]) -> None:
    """Raise ConfigError unless every STL value is a finite non-zero number.

    Delta_m divides each task's difference by its STL value: a zero (or NaN, or a string) would
    let a run train to the end and then fail to compute, or to write, its result.
    """
    for key, value in refs.values.items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            problem = f"is {value!r}, not a number"
        elif not math.isfinite(value) or value == 0:
            problem = f"is {value}: Delta_m divides by it"
        else:
            continue
        raise ConfigError(
            f"references file {path}: the STL value of {key!r} {problem}; "
            "give a finite non-zero value or choose --references auto|published|none"
        )


def resolve_references(
    spec: Benchmark,
    choice: str,
    own_file: str | os.PathLike[str] | None,
    *,
    partial: bool = False,
) -> References | None:
    """Return the references for ``choice`` ("auto", "published", "own", "none" or a file).

    "auto": the published values where they exist, else this project's own STL runs where they
    exist and cover every task, else None (no Delta_m). "own" or a file that lacks some task is
    an error naming the missing tasks (a run would otherwise select on another criterion
    without saying so), or None with ``partial`` (a report of a campaign still running).
    """
    published = spec.published_references()
    own_exists = own_file is not None and Path(own_file).is_file()
    if choice == "none":
        return None
    if choice == "published":
        if published is None:
            raise ConfigError(
                f"benchmark {spec.name!r} has no published STL references; run "
                "`bayesagg run --method stl` and pass --references own"
            )
        return published
    if choice == "own":
        if not own_exists:
            raise ConfigError(
                f"no STL references of this project at {own_file}: run "
                f"`bayesagg run --benchmark {spec.name} --method stl` with the same protocol first"
            )
        return _checked(spec, load_references(own_file), own_file, partial)
    if choice == "auto":
        if published is not None:
            return published
        if own_exists:
            return _complete(spec, load_references(own_file))
        return None
    return _checked(spec, load_references(choice), choice, partial)


def coverage(spec: Benchmark, refs: References) -> str | None:
    """Return "N of M tasks (missing: ...)" where ``refs`` lacks a task of ``spec``, else None."""
    keys = spec.task_metrics()
    missing = [k for k in keys if k not in refs.values]
    if not missing:
        return None
    return f"{len(keys) - len(missing)} of {len(keys)} tasks (missing: {', '.join(missing)})"


def _checked(
    spec: Benchmark, refs: References, path: str | os.PathLike[str], partial: bool
) -> References | None:
    """Return ``refs`` if complete; else None (``partial``) or a ConfigError naming the gaps."""
    gaps = coverage(spec, refs)
    if gaps is not None and not partial:
        raise ConfigError(
            f"STL references {path} cover {gaps.replace(' tasks', f' tasks of {spec.name}', 1)}: "
            "finish those STL runs (`bayesagg run --method stl --task T`) or choose "
            "--references auto|published|none"
        )
    return _complete(spec, refs)


def _complete(spec: Benchmark, refs: References) -> References | None:
    """Return ``refs`` if it covers every task metric of ``spec`` (else None: partial STL)."""
    return None if coverage(spec, refs) is not None else refs


def write_own_references(
    out: str | os.PathLike[str], benchmark: Benchmark, protocol_dir: str
) -> Path:
    """Write ``references.json`` from every finished STL run of this benchmark and protocol.

    Values are the mean test metric over the seeds found for each task; ``complete`` says
    whether every task has at least one run.
    """
    root = Path(out) / benchmark.name / protocol_dir / "stl"
    per_task: dict[str, dict[int, float]] = defaultdict(dict)
    runs: list[str] = []
    for path, data in find_results(root):
        key = data["stl_metric"]
        value = data["test"].get(key)
        if value is None:
            continue
        per_task[key][int(data["seed"])] = float(value)
        runs.append(str(path.relative_to(Path(out))))
    keys = benchmark.task_metrics()
    values = {k: statistics.fmean(per_task[k].values()) for k in keys if per_task.get(k)}
    seeds = sorted({s for v in per_task.values() for s in v})
    document: dict[str, Any] = {
        "schema": SCHEMA,
        "benchmark": benchmark.name,
        "protocol": protocol_dir,
        "kind": "own-stl",
        "source": (
            f"this project's STL runs, {benchmark.name} protocol {protocol_dir}, "
            f"seeds {seeds}, mean test metric over seeds"
        ),
        "split": "test",
        "complete": len(values) == len(keys),
        "values": values,
        "per_seed": {k: {str(s): v for s, v in sorted(d.items())} for k, d in per_task.items()},
        "runs": runs,
        "written": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    path = root.parent / OWN_FILE
    write_json_atomic(path, document)
    return path
