"""Results on disk: one JSON per run (written atomically) and a per-epoch CSV log.

Layout under ``--out`` (docs/results-schema.md)::

    <out>/<benchmark>/<protocol>/<method label>/seed<N>/result.json, epochs.csv
    <out>/<benchmark>/<protocol>/stl/seed<N>/<task>/result.json, epochs.csv
    <out>/<benchmark>/<protocol>/references.json       (this project's STL references)

A run's ``result.json`` appears only when the run has finished (temporary file + rename), so
its presence is what marks a run as done.
"""

from __future__ import annotations

import csv
import json
import os
import platform
import re
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from bayesagg.runner.config import RunConfig

__all__ = [
    "EPOCH_FILE",
    "RESULT_FILE",
    "SCHEMA",
    "EpochLog",
    "UnreadableResult",
    "file_mode",
    "find_results",
    "foreign_reason",
    "method_label",
    "package_versions",
    "protocol_dir",
    "read_epochs",
    "read_json",
    "read_result",
    "run_dir",
    "write_json_atomic",
]

SCHEMA = "bayesagg.result/1"
RESULT_FILE = "result.json"
EPOCH_FILE = "epochs.csv"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=+-]+", "_", text).strip("_") or "_"


def method_label(method: str, hparams: Mapping[str, Any]) -> str:
    """Return the method's name plus its non-default hyper-parameters, e.g. ``bayesagg[s=0.5]``."""
    if not hparams:
        return method
    inner = ",".join(f"{k}={hparams[k]}" for k in sorted(hparams))
    return f"{method}[{inner}]"


def protocol_dir(config: RunConfig) -> Path:
    """Return ``<out>/<benchmark>/<protocol>[+overrides]``: the runs of one comparable recipe."""
    overrides = [
        f"{k}{v}"
        for k, v in (
            ("e", config.epochs),
            ("b", config.batch_size),
            ("lr", config.lr),
            ("n", config.train_limit),
            ("m", config.eval_limit),
        )
        if v is not None
    ]
    opts = {**{f"model.{k}": v for k, v in config.model_options.items()}}
    opts.update({f"data.{k}": v for k, v in config.data_options.items()})
    overrides += [f"{k}={v}" for k, v in sorted(opts.items())]
    if config.precision != "fp32":
        overrides.append(config.precision)
    protocol = config.protocol + ("+" + "-".join(_slug(o) for o in overrides) if overrides else "")
    return Path(config.out) / config.benchmark / protocol


def run_dir(config: RunConfig, task: str | None = None) -> Path:
    """Return the folder of one run (for STL, of the model of ``task``)."""
    label = _slug(method_label(config.method, config.hparams))
    path = protocol_dir(config) / label / f"seed{config.seed}"
    if task is not None:
        path = path / _slug(task)
    return path


def file_mode() -> int:
    """Return the mode of a file created the ordinary way: 0o666 less the process's umask.

    ``tempfile.mkstemp`` creates files 0600 (private), and the rename of an atomic write keeps
    that mode: results and checkpoints would be unreadable to the group and others, unlike
    ``epochs.csv``. Atomic writes set this mode instead, so every file of a run follows the
    umask alike.
    """
    try:
        with open("/proc/self/status") as f:  # Linux: read without changing it
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def write_json_atomic(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as JSON to ``path`` through a temporary file and a rename (all or nothing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False, default=_jsonable)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot write {type(value).__name__} to a results JSON")


def read_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


class UnreadableResult(ValueError):
    """A result file that cannot be read, or that is not a finished run's result document."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"unreadable result file {path} ({reason})")
        self.path = path
        self.reason = reason


def read_result(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Return the finished run's result document at ``path`` (``<run>/result.json``).

    Raises :class:`UnreadableResult` naming the file and why when it cannot be read or parsed
    (truncated, edited by hand) or is not a run's result (``{}``, another schema, required
    fields missing): such a file belongs to no finished run.
    """
    path = Path(path)
    try:
        data = read_json(path)
    except (OSError, ValueError) as err:
        raise UnreadableResult(path, f"{type(err).__name__}: {err}") from None
    reason = foreign_reason(data)
    if reason is not None:
        raise UnreadableResult(path, reason)
    return data


def find_results(
    root: str | os.PathLike[str], unreadable: list[tuple[Path, str]] | None = None
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Yield (path, content) of every finished run's result JSON under ``root``.

    A result file that :func:`read_result` cannot read belongs to no finished run: it is
    skipped and named, in ``unreadable`` as (path, reason) when given, else in a warning, so
    that a table never loses a run without saying so. ``run`` and ``compare`` treat such a run
    as unfinished and redo it.
    """
    for path in sorted(Path(root).rglob(RESULT_FILE)):
        try:
            data = read_result(path)
        except UnreadableResult as err:
            if unreadable is None:
                warnings.warn(
                    f"unreadable result file {path} ({err.reason}): treated as unfinished",
                    stacklevel=2,
                )
            else:
                unreadable.append((path, err.reason))
            continue
        yield path, data


def read_epochs(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """Return the rows of a run's ``epochs.csv`` (``path``: the file or the run's folder).

    Values are the CSV's text (an empty string where a value was None); columns may differ
    between runs (the diagnostics' ``diag/`` columns, the weights of methods that have them).
    """
    path = Path(path)
    if path.is_dir():
        path = path / EPOCH_FILE
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


#: The fields that reports and summaries read from every result document.
REQUIRED_FIELDS = (
    "benchmark",
    "method",
    "method_label",
    "seed",
    "protocol",
    "protocol_dir",
    "task_metrics",
    "selection",
    "test",
)


def foreign_reason(data: Any) -> str | None:
    """Return why parsed JSON ``data`` is not a finished run's result document, else None."""
    if not isinstance(data, dict):
        return f"a JSON {type(data).__name__}, not a {SCHEMA} object"
    if data.get("schema") != SCHEMA:
        found = "no schema" if "schema" not in data else f"schema {data['schema']!r}"
        return f"not a run result ({found}, expected {SCHEMA!r})"
    missing = [k for k in REQUIRED_FIELDS if k not in data]
    if missing:
        return f"a {SCHEMA} document without {', '.join(missing)}"
    return None


def package_versions() -> dict[str, str | None]:
    """Return the versions of Python and of the packages that shape a result."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for dist in (
        "bayesagg-mtl",
        "torch",
        "numpy",
        "torchvision",
        "torch_geometric",
        "torchmetrics",
        "scikit-learn",
        "torchjd",
        "cvxpy",
        "qm9pack",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    out["platform"] = platform.platform()
    return out


class EpochLog:
    """The per-epoch CSV log of a run, rewritten whole after every epoch (columns may grow)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []

    def append(self, row: Mapping[str, Any]) -> None:
        self.rows.append(dict(row))
        self._write()

    def restore(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Start from the rows of a resumed run (its checkpoint's) and rewrite the file."""
        self.rows = [dict(r) for r in rows]
        self._write()

    def _write(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            writer.writerows(_csv_row(r) for r in self.rows)
        os.replace(tmp, self.path)


def _csv_row(row: Mapping[str, Any]) -> dict[str, Any]:
    return {k: ("" if v is None else v) for k, v in row.items()}


def flatten(prefix: str, metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``{prefix + key: value}`` (for CSV columns like ``val/U0/mae``)."""
    return {f"{prefix}{k}": v for k, v in (metrics or {}).items()}


def list_or_none(values: Sequence[float] | None) -> list[float] | None:
    return None if values is None else [float(v) for v in values]
